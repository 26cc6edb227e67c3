"""Buckets every stack with S3 data needs alike."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct


def access_log_bucket(scope: Construct, construct_id: str = "AccessLogs") -> s3.Bucket:
    """A bucket for S3 server access logs: private, TLS-only, versioned, kept on delete."""
    return s3.Bucket(
        scope,
        construct_id,
        # S3 server access logging cannot deliver to an SSE-KMS bucket.
        encryption=s3.BucketEncryption.S3_MANAGED,
        versioned=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        removal_policy=RemovalPolicy.RETAIN,
    )
