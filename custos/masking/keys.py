"""Secret keys: the masking key, for pseudonyms in results, and the audit key, for the
pseudonyms the audit trail keeps of identifiers.

In order: a file (`key_file`), an AWS Secrets Manager secret (`key_secret`, its name or
ARN), or an environment variable (`key_env`: CUSTOS_MASKING_KEY and CUSTOS_AUDIT_KEY by
default). A key is the text's UTF-8 bytes, at least 32 of them (`openssl rand -hex 32`
makes one). Rotating the masking key changes every pseudonym: results masked before and
after no longer join; keep the old key while both must. The audit key is a different
one, so that nobody holding the masking key can link results to the audit trail's index.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

MIN_KEY_BYTES = 32


class KeySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_file: Path | None = None
    key_secret: str | None = None
    key_env: str


class MaskingSettings(KeySettings):
    key_env: str = "CUSTOS_MASKING_KEY"


class KeyLoadError(Exception):
    """The key configured cannot be used; the message says why and what to do."""


def secret_key(settings: KeySettings, purpose: str) -> bytes | None:
    """The configured key (`purpose` names it in errors: "masking", "audit"); None when
    none is configured."""
    if settings.key_file is not None:
        try:
            text = settings.key_file.read_text().strip()
        except OSError as error:
            raise KeyLoadError(
                f"cannot read the {purpose} key file {settings.key_file}: {error.strerror}"
            ) from None
        return _checked(text, purpose, f"the key file {settings.key_file}")
    if settings.key_secret is not None:
        text = _secret(settings.key_secret, purpose)
        return _checked(text, purpose, f"the secret {settings.key_secret}")
    value = os.environ.get(settings.key_env)
    return None if value is None else _checked(value.strip(), purpose, f"${settings.key_env}")


def _secret(name: str, purpose: str) -> str:
    import boto3  # only where the key is in Secrets Manager

    try:
        answer = boto3.client("secretsmanager").get_secret_value(SecretId=name)
    except Exception as error:
        raise KeyLoadError(f"cannot read the {purpose} key secret {name}: {error}") from None
    text = answer.get("SecretString")
    if not isinstance(text, str):
        raise KeyLoadError(f"the {purpose} key secret {name} holds no text (SecretString)")
    return text.strip()


def _checked(text: str, purpose: str, where: str) -> bytes:
    key = text.encode()
    if len(key) < MIN_KEY_BYTES:
        raise KeyLoadError(
            f"the {purpose} key in {where} is {len(key)} bytes; it needs at least"
            f" {MIN_KEY_BYTES} (make one with `openssl rand -hex 32`)"
        )
    return key
