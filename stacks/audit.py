"""The audit trail in AWS beyond its storage: archiver, digests, and the auditors' Athena.

- The archiver Lambda reads the events table's stream and writes the events and the
  data-subject index into the Object Lock bucket (``events/`` and ``subject_access/``).
- The digest Lambda runs on a schedule and signs each hour's digest (``digests/``) with an
  asymmetric KMS key, as CloudTrail signs its digests.
- Glue tables over the two prefixes (partition projection, so no crawler and no
  partition maintenance), an Athena workgroup whose encrypted results it enforces, and the
  named queries of custos/audit/queries/.
"""

from __future__ import annotations

from typing import Any, cast

from aws_cdk import Acknowledgment, Duration, Fn, RemovalPolicy, Stack, Validations
from aws_cdk import aws_athena as athena
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct
from pydantic import BaseModel

from custos.audit.events import AuditEvent, SubjectAccess
from stacks.audit_storage import AuditStorageStack
from stacks.buckets import access_log_bucket, private_bucket
from stacks.config import CustosContext, skip_bundling
from stacks.glue_columns import glue_columns
from stacks.lambda_code import function_code, logged_function
from stacks.named_queries import read_named_queries

ARCHIVER_HANDLER = "lambdas.audit_archiver.handler.handler"
DIGEST_HANDLER = "lambdas.audit_digest.handler.handler"
GLUE_DATABASE = "custos_audit"
WORKGROUP = "custos-audit"
# The archive's layout (custos/audit/local.py): <table>/dt=YYYY-MM-DD/hour=HH/<segment>.
EVENTS_PREFIX = "events"
SUBJECT_ACCESS_PREFIX = "subject_access"
DIGESTS_PREFIX = "digests"
ARCHIVE_TABLES: dict[str, type[BaseModel]] = {
    EVENTS_PREFIX: AuditEvent,
    SUBJECT_ACCESS_PREFIX: SubjectAccess,
}
ARCHIVER_BATCH_SIZE = 100
# Failed records are retried (the stream keeps them 24 hours) before their batch's position
# goes to the dead-letter queue; the events stay in the table for the hot tier's days.
ARCHIVER_RETRY_ATTEMPTS = 10
QUERY_RESULTS_DAYS = 30
JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"


class AuditStack(Stack):
    """Archiver, digests, Glue tables, Athena workgroup and named queries over ``storage``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        context: CustosContext,
        storage: AuditStorageStack,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.storage = storage
        # Imported under export names of our own: cdk-nag names the prefix wildcards below
        # by them, so each is acknowledged by its exact finding.
        self.bucket_export = f"{storage.stack_name}-AuditBucketArn"
        self.table_export = f"{storage.stack_name}-EventsTableArn"
        self.audit_bucket_arn = storage.export_value(
            storage.audit_bucket.bucket_arn, name=self.bucket_export
        )
        self.events_table_arn = storage.export_value(
            storage.events_table.table_arn, name=self.table_export
        )
        code = function_code(skip_bundling=skip_bundling(self))
        self.archiver = self._archiver(code)
        self.signing_key = kms.Key(
            self,
            "DigestSigningKey",
            description="Custos audit digests: signs each hour's digest of the archive",
            key_spec=kms.KeySpec.ECC_NIST_P256,
            key_usage=kms.KeyUsage.SIGN_VERIFY,
            # Old digests are verified with this key's public key for as long as they exist.
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.digest = self._digest(code, context.audit_digest_minutes)
        self.glue_database, self.glue_tables = self._glue(context)
        self.workgroup = self._workgroup()
        self.named_queries = [
            athena.CfnNamedQuery(
                self,
                f"Query-{query.path.stem}",
                name=query.name,
                description=query.description,
                query_string=query.query,
                database=self.glue_database.ref,
                work_group=self.workgroup.ref,
            )
            for query in read_named_queries()
        ]

    def _function(
        self, construct_id: str, code: lambda_.Code, handler: str, environment: dict[str, str]
    ) -> lambda_.Function:
        """A function whose role may write its own log group and nothing else yet."""
        function = logged_function(
            self,
            construct_id,
            code=code,
            handler=handler,
            environment=environment,
            timeout=Duration.minutes(2),
        )
        Validations.of(function).acknowledge(
            Acknowledgment(
                id="AwsSolutions::AwsSolutions-L1",
                reason="Pinned to Python 3.12: the bundle's binary wheels (pglast, "
                "pydantic-core) are installed for 3.12; move runtime and bundler together.",
            )
        )
        return function

    def _archiver(self, code: lambda_.Code) -> lambda_.Function:
        storage = self.storage
        archiver = self._function(
            "Archiver",
            code,
            ARCHIVER_HANDLER,
            {
                "AUDIT_BUCKET": storage.audit_bucket.bucket_name,
                "AUDIT_KMS_KEY_ID": storage.key.key_arn,
            },
        )
        self.archiver_failures = sqs.Queue(
            self,
            "ArchiverFailures",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        Validations.of(self.archiver_failures).acknowledge(
            Acknowledgment(
                id="AwsSolutions::AwsSolutions-SQS3",
                reason="This queue is itself the dead-letter destination of the archiver's "
                "stream mapping; it holds where a failed batch was in the stream, not events.",
            )
        )
        # The mapping is added directly, not through DynamoEventSource: that grants
        # dynamodb:ListStreams on "*" and kms:Decrypt outside DynamoDB; the grants below
        # are the stream's and DynamoDB's only.
        archiver.add_event_source_mapping(
            "EventsStream",
            event_source_arn=storage.events_table.table_stream_arn,
            starting_position=lambda_.StartingPosition.TRIM_HORIZON,
            batch_size=ARCHIVER_BATCH_SIZE,
            bisect_batch_on_error=False,
            report_batch_item_failures=True,
            retry_attempts=ARCHIVER_RETRY_ATTEMPTS,
            on_failure=event_sources.SqsDlq(self.archiver_failures),
        )
        archiver.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "dynamodb:DescribeStream",
                    "dynamodb:GetRecords",
                    "dynamodb:GetShardIterator",
                    "dynamodb:ListStreams",
                ],
                resources=[f"{self.events_table_arn}/stream/*"],
            )
        )
        self._acknowledge_wildcards(
            archiver,
            [f"{self.table_export}/stream/*"],
            "A stream's ARN ends in its creation time, so a reader names the table's "
            "streams; the actions are the four a stream event source needs.",
        )
        # The stream is encrypted under the table's key; DynamoDB decrypts for the reader.
        archiver.add_to_role_policy(self._audit_key_via("dynamodb", "kms:Decrypt"))
        archiver.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject"],
                resources=[f"{self.audit_bucket_arn}/{prefix}/*" for prefix in ARCHIVE_TABLES],
            )
        )
        self._acknowledge_wildcards(
            archiver,
            [f"{self.bucket_export}/{prefix}/*" for prefix in ARCHIVE_TABLES],
            "The archiver adds new objects (PutObject only) under the archive's two table "
            "prefixes; Object Lock keeps it from changing or deleting any.",
        )
        # S3 encrypts the objects under the audit key (SSE-KMS) on the archiver's behalf.
        archiver.add_to_role_policy(self._audit_key_via("s3", "kms:Encrypt", "kms:GenerateDataKey"))
        return archiver

    def _digest(self, code: lambda_.Code, minutes: int) -> lambda_.Function:
        storage = self.storage
        digest = self._function(
            "Digest",
            code,
            DIGEST_HANDLER,
            {
                "AUDIT_BUCKET": storage.audit_bucket.bucket_name,
                "DIGEST_KMS_KEY_ID": self.signing_key.key_arn,
            },
        )
        self.digest_schedule = events.Rule(
            self,
            "DigestSchedule",
            description="Custos audit: sign the digests of the hours that have closed",
            schedule=events.Schedule.rate(Duration.minutes(minutes)),
            targets=[events_targets.LambdaFunction(digest, retry_attempts=2)],
        )
        digest.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"], resources=[storage.audit_bucket.bucket_arn]
            )
        )
        # It hashes the hour's segments and chains to the previous digest.
        digest.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[
                    f"{self.audit_bucket_arn}/{prefix}/*"
                    for prefix in (*ARCHIVE_TABLES, DIGESTS_PREFIX)
                ],
            )
        )
        digest.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject"],
                resources=[f"{self.audit_bucket_arn}/{DIGESTS_PREFIX}/*"],
            )
        )
        self._acknowledge_wildcards(
            digest,
            [f"{self.bucket_export}/{prefix}/*" for prefix in (*ARCHIVE_TABLES, DIGESTS_PREFIX)],
            "The digest reads the hour's segments under the archive's prefixes and the "
            "previous digest, and adds digests only under digests/ (Object Lock keeps them).",
        )
        # Reading the SSE-KMS objects and writing the digest: through S3 only.
        digest.add_to_role_policy(self._audit_key_via("s3", "kms:Decrypt", "kms:GenerateDataKey"))
        digest.add_to_role_policy(
            iam.PolicyStatement(actions=["kms:Sign"], resources=[self.signing_key.key_arn])
        )
        return digest

    @staticmethod
    def _acknowledge_wildcards(
        function: lambda_.Function, resources: list[str], reason: str
    ) -> None:
        """Accepts cdk-nag's IAM5 finding on each of ``resources`` (prefix wildcards)."""
        policy = cast(iam.IRole, function.role).node.find_child("DefaultPolicy")
        Validations.of(policy).acknowledge(
            *(
                Acknowledgment(
                    id=f"AwsSolutions::AwsSolutions-IAM5[Resource::{resource}]", reason=reason
                )
                for resource in resources
            )
        )

    def _audit_key_via(self, service: str, *actions: str) -> iam.PolicyStatement:
        """``actions`` on the audit key, usable only through ``service`` on our behalf."""
        return iam.PolicyStatement(
            actions=list(actions),
            resources=[self.storage.key.key_arn],
            conditions={
                "StringEquals": {"kms:ViaService": f"{service}.{self.region}.amazonaws.com"}
            },
        )

    def _glue(self, context: CustosContext) -> tuple[glue.CfnDatabase, list[glue.CfnTable]]:
        database = glue.CfnDatabase(
            self,
            "GlueDatabase",
            catalog_id=self.account,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=GLUE_DATABASE,
                description="Custos audit archive: events and the data-subject index",
            ),
        )
        tables = [
            self._glue_table(database, prefix, model, context)
            for prefix, model in ARCHIVE_TABLES.items()
        ]
        return database, tables

    def _glue_table(
        self,
        database: glue.CfnDatabase,
        prefix: str,
        model: type[BaseModel],
        context: CustosContext,
    ) -> glue.CfnTable:
        bucket = self.storage.audit_bucket.bucket_name
        # ${!dt} is Fn::Sub's escape for a literal ${dt}, which Athena fills in.
        location_template = Fn.sub(
            f"s3://${{Bucket}}/{prefix}/dt=${{!dt}}/hour=${{!hour}}/", {"Bucket": bucket}
        )
        return glue.CfnTable(
            self,
            f"GlueTable-{prefix}",
            catalog_id=self.account,
            database_name=database.ref,
            table_input=glue.CfnTable.TableInputProperty(
                name=prefix,
                description=f"Custos audit archive: {model.__name__} records "
                "(gzipped JSON Lines); time is ISO 8601 text, use from_iso8601_timestamp",
                table_type="EXTERNAL_TABLE",
                partition_keys=[
                    glue.CfnTable.ColumnProperty(name="dt", type="string"),
                    glue.CfnTable.ColumnProperty(name="hour", type="string"),
                ],
                parameters={
                    "classification": "json",
                    "compressionType": "gzip",
                    "projection.enabled": "true",
                    "projection.dt.type": "date",
                    "projection.dt.format": "yyyy-MM-dd",
                    "projection.dt.range": f"{context.audit_archive_start.isoformat()},NOW",
                    "projection.dt.interval": "1",
                    "projection.dt.interval.unit": "DAYS",
                    "projection.hour.type": "integer",
                    "projection.hour.range": "0,23",
                    "projection.hour.digits": "2",
                    "storage.location.template": location_template,
                },
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    location=f"s3://{bucket}/{prefix}/",
                    input_format="org.apache.hadoop.mapred.TextInputFormat",
                    output_format="org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
                    compressed=True,
                    serde_info=glue.CfnTable.SerdeInfoProperty(serialization_library=JSON_SERDE),
                    columns=[
                        glue.CfnTable.ColumnProperty(name=name, type=kind)
                        for name, kind in glue_columns(model)
                    ],
                ),
            ),
        )

    def _workgroup(self) -> athena.CfnWorkGroup:
        self.results_key = kms.Key(
            self,
            "QueryResultsKey",
            description="Custos audit: Athena query results",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # A log bucket of this stack's own: a cross-stack log target makes a cycle with
        # the storage stack (see PolicyStack).
        self.access_log_bucket = access_log_bucket(self)
        self.results_bucket = private_bucket(
            self,
            "QueryResults",
            access_logs=self.access_log_bucket,
            access_logs_prefix="query-results/",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.results_key,
            bucket_key_enabled=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    expiration=Duration.days(QUERY_RESULTS_DAYS),
                    noncurrent_version_expiration=Duration.days(1),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
        )
        config = athena.CfnWorkGroup
        return athena.CfnWorkGroup(
            self,
            "Workgroup",
            name=WORKGROUP,
            description="Custos audit: queries over the audit archive",
            state="ENABLED",
            work_group_configuration=config.WorkGroupConfigurationProperty(
                # Clients cannot send results elsewhere or unencrypted.
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                engine_version=config.EngineVersionProperty(
                    selected_engine_version="Athena engine version 3"
                ),
                result_configuration=config.ResultConfigurationProperty(
                    output_location=self.results_bucket.s3_url_for_object("results/"),
                    expected_bucket_owner=self.account,
                    encryption_configuration=config.EncryptionConfigurationProperty(
                        encryption_option="SSE_KMS", kms_key=self.results_key.key_arn
                    ),
                ),
            ),
        )
