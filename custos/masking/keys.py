"""The masking key: where pseudonyms' secret comes from.

In order: a file (`masking.key_file`), an AWS Secrets Manager secret (`masking.key_secret`,
its name or ARN), or an environment variable (`masking.key_env`, CUSTOS_MASKING_KEY by
default). The key is the text's UTF-8 bytes, at least 32 of them (`openssl rand -hex 32`
makes one). Rotating it changes every pseudonym: results masked before and after no longer
join; keep the old key while both must.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

MIN_KEY_BYTES = 32


class MaskingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_file: Path | None = None
    key_secret: str | None = None
    key_env: str = "CUSTOS_MASKING_KEY"


class MaskingKeyError(Exception):
    """The key configured cannot be used; the message says why and what to do."""


def masking_key(settings: MaskingSettings) -> bytes | None:
    """The configured key; None when none is (pseudonyms are then refused)."""
    if settings.key_file is not None:
        try:
            text = settings.key_file.read_text().strip()
        except OSError as error:
            raise MaskingKeyError(
                f"cannot read the masking key file {settings.key_file}: {error.strerror}"
            ) from None
        return _checked(text, f"the key file {settings.key_file}")
    if settings.key_secret is not None:
        return _checked(_secret(settings.key_secret), f"the secret {settings.key_secret}")
    value = os.environ.get(settings.key_env)
    return None if value is None else _checked(value.strip(), f"${settings.key_env}")


def _secret(name: str) -> str:
    import boto3  # only where the key is in Secrets Manager

    try:
        answer = boto3.client("secretsmanager").get_secret_value(SecretId=name)
    except Exception as error:
        raise MaskingKeyError(f"cannot read the masking key secret {name}: {error}") from None
    text = answer.get("SecretString")
    if not isinstance(text, str):
        raise MaskingKeyError(f"the masking key secret {name} holds no text (SecretString)")
    return text.strip()


def _checked(text: str, where: str) -> bytes:
    key = text.encode()
    if len(key) < MIN_KEY_BYTES:
        raise MaskingKeyError(
            f"the masking key in {where} is {len(key)} bytes; it needs at least"
            f" {MIN_KEY_BYTES} (make one with `openssl rand -hex 32`)"
        )
    return key
