"""Where the audit record lives: the events table and the Object-Locked audit bucket."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.buckets import access_log_bucket, private_bucket
from stacks.config import CustosContext

EVENTS_TTL_ATTRIBUTE = "expires_at"
# Events by data subject and time: the gateway writes subject_pk and subject_sk on the items
# that name a subject; the others stay out of the index.
SUBJECT_INDEX = "by_subject"
SUBJECT_INDEX_PARTITION_KEY = "subject_pk"
SUBJECT_INDEX_SORT_KEY = "subject_sk"


class AuditStorageStack(Stack):
    """The customer-managed key, the events table, the audit bucket and its access-log bucket.

    Everything here is RETAIN: deleting the stack must never delete evidence.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, context: CustosContext, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.key = kms.Key(
            self,
            "AuditKey",
            description="Custos audit evidence: events table and audit bucket",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.events_table = dynamodb.Table(
            self,
            "Events",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=EVENTS_TTL_ATTRIBUTE,
            # The archiver reads the stream to copy each event into the locked bucket.
            stream=dynamodb.StreamViewType.NEW_IMAGE,
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.events_table.add_global_secondary_index(
            index_name=SUBJECT_INDEX,
            partition_key=dynamodb.Attribute(
                name=SUBJECT_INDEX_PARTITION_KEY, type=dynamodb.AttributeType.STRING
            ),
            sort_key=dynamodb.Attribute(
                name=SUBJECT_INDEX_SORT_KEY, type=dynamodb.AttributeType.STRING
            ),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        self.access_log_bucket = access_log_bucket(self)
        self.audit_bucket = private_bucket(
            self,
            "AuditBucket",
            access_logs=self.access_log_bucket,
            access_logs_prefix="audit-bucket/",
            object_lock_enabled=True,
            # COMPLIANCE: not even the account root can shorten retention or delete early.
            object_lock_default_retention=s3.ObjectLockRetention.compliance(
                Duration.days(context.audit_retention_days)
            ),
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
        )
