"""Buckets every stack with S3 data needs alike."""

from __future__ import annotations

from typing import Any

from aws_cdk import RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct


def private_bucket(
    scope: Construct,
    construct_id: str,
    *,
    access_logs: s3.IBucket | None = None,
    access_logs_prefix: str | None = None,
    **properties: Any,
) -> s3.Bucket:
    """A bucket as every Custos bucket is: private, TLS-only, versioned, kept on delete.

    `access_logs` receives its server access logs; `properties` add to the baseline
    (encryption, object lock), never loosen it.
    """
    return s3.Bucket(
        scope,
        construct_id,
        versioned=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix=access_logs_prefix,
        removal_policy=RemovalPolicy.RETAIN,
        **properties,
    )


def access_log_bucket(scope: Construct, construct_id: str = "AccessLogs") -> s3.Bucket:
    """A bucket for S3 server access logs."""
    # S3 server access logging cannot deliver to an SSE-KMS bucket.
    return private_bucket(scope, construct_id, encryption=s3.BucketEncryption.S3_MANAGED)
