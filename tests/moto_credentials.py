"""Stand-in AWS credentials for tests under moto: no real account is ever reached."""

from __future__ import annotations

import pytest


def use_fake_credentials(monkeypatch: pytest.MonkeyPatch, region: str) -> None:
    """Sets moto's stand-in credentials, and the region, for the test's boto3 clients."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
    }.items():
        monkeypatch.setenv(name, value)
