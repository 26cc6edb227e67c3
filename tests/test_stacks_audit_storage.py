"""The audit storage stack: the evidence must be encrypted, locked, private and retained."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Match, Template
from cdk_fixtures import BLOCK_ALL, TEST_CONTEXT, CdkSynth


@pytest.fixture(scope="module")
def audit(cdk_synth: CdkSynth) -> Template:
    return cdk_synth.templates["Custos-AuditStorage"]


def _logical_id(template: Template, resource_type: str, props: dict[str, Any]) -> str:
    found = template.find_resources(resource_type, {"Properties": props})
    assert len(found) == 1, found
    return next(iter(found))


def _assert_tls_only(template: Template, bucket_id: str) -> None:
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": bucket_id},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "s3:*",
                                "Principal": {"AWS": "*"},
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_key_rotates_and_is_retained(audit: Template) -> None:
    audit.has_resource(
        "AWS::KMS::Key",
        {"Properties": Match.object_like({"EnableKeyRotation": True}), "DeletionPolicy": "Retain"},
    )


def test_events_table_shape(audit: Template) -> None:
    key_id = _logical_id(audit, "AWS::KMS::Key", {})
    audit.has_resource(
        "AWS::DynamoDB::Table",
        {
            "Properties": Match.object_like(
                {
                    "KeySchema": [
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    "AttributeDefinitions": [
                        {"AttributeName": "pk", "AttributeType": "S"},
                        {"AttributeName": "sk", "AttributeType": "S"},
                        {"AttributeName": "subject_pk", "AttributeType": "S"},
                        {"AttributeName": "subject_sk", "AttributeType": "S"},
                    ],
                    "GlobalSecondaryIndexes": [
                        {
                            "IndexName": "by_subject",
                            "KeySchema": [
                                {"AttributeName": "subject_pk", "KeyType": "HASH"},
                                {"AttributeName": "subject_sk", "KeyType": "RANGE"},
                            ],
                            "Projection": {"ProjectionType": "ALL"},
                        }
                    ],
                    "BillingMode": "PAY_PER_REQUEST",
                    "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                    "SSESpecification": {
                        "SSEEnabled": True,
                        "SSEType": "KMS",
                        "KMSMasterKeyId": {"Fn::GetAtt": [key_id, "Arn"]},
                    },
                    "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
                    "StreamSpecification": {"StreamViewType": "NEW_IMAGE"},
                    "DeletionProtectionEnabled": True,
                }
            ),
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
        },
    )


def test_audit_bucket_is_locked_in_compliance_mode(audit: Template) -> None:
    audit.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "ObjectLockEnabled": True,
            "ObjectLockConfiguration": {
                "ObjectLockEnabled": "Enabled",
                "Rule": {
                    "DefaultRetention": {
                        "Mode": "COMPLIANCE",
                        "Days": TEST_CONTEXT["audit_retention_days"],
                    }
                },
            },
            "VersioningConfiguration": {"Status": "Enabled"},
        },
    )


def test_audit_bucket_is_kms_encrypted_private_tls_only_logged_retained(audit: Template) -> None:
    key_id = _logical_id(audit, "AWS::KMS::Key", {})
    bucket_id = _logical_id(audit, "AWS::S3::Bucket", {"ObjectLockEnabled": True})
    log_bucket_id = _logical_id(audit, "AWS::S3::Bucket", {"ObjectLockEnabled": Match.absent()})
    bucket = audit.to_json()["Resources"][bucket_id]
    props = bucket["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"
    ] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Fn::GetAtt": [key_id, "Arn"]}}
    assert props["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": log_bucket_id}
    assert bucket["DeletionPolicy"] == "Retain"
    _assert_tls_only(audit, bucket_id)


def test_access_log_bucket_is_encrypted_versioned_private_tls_only_retained(
    audit: Template,
) -> None:
    log_bucket_id = _logical_id(audit, "AWS::S3::Bucket", {"ObjectLockEnabled": Match.absent()})
    log_bucket = audit.to_json()["Resources"][log_bucket_id]
    props = log_bucket["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"
    ] == {"SSEAlgorithm": "AES256"}
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert log_bucket["DeletionPolicy"] == "Retain"
    _assert_tls_only(audit, log_bucket_id)


def test_only_s3_logging_may_write_to_the_log_bucket(audit: Template) -> None:
    log_bucket_id = _logical_id(audit, "AWS::S3::Bucket", {"ObjectLockEnabled": Match.absent()})
    policies = audit.find_resources(
        "AWS::S3::BucketPolicy", {"Properties": {"Bucket": {"Ref": log_bucket_id}}}
    )
    (policy,) = policies.values()
    allows = [
        statement
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Allow"
    ]
    assert [statement["Principal"] for statement in allows] == [
        {"Service": "logging.s3.amazonaws.com"}
    ]
    assert allows[0]["Action"] == "s3:PutObject"
