"""The keys the stacks generate for Custos itself in Secrets Manager: the masking, audit and
approvals keys (HMAC pseudonyms, signed links)."""

from __future__ import annotations

from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct


def generated_key(scope: Construct, construct_id: str, description: str) -> secretsmanager.Secret:
    """A secret of 64 random letters and digits, generated once at deployment, never shown;
    the gateway and the Lambdas read it as the key's text (at least 32 bytes)."""
    return secretsmanager.Secret(
        scope,
        construct_id,
        description=description,
        generate_secret_string=secretsmanager.SecretStringGenerator(
            exclude_punctuation=True, password_length=64
        ),
    )
