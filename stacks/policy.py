"""The policy bucket and the policy evaluation Lambda that reads it."""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.buckets import access_log_bucket, private_bucket
from stacks.config import CustosContext, skip_bundling
from stacks.lambda_code import RUNTIME, function_code

POLICY_KEY = "policy.yaml"
HANDLER = "lambdas.policy_eval.handler.handler"
METRICS_NAMESPACE = "Custos"


class PolicyStack(Stack):
    """The versioned policy bucket and the Lambda that decides statements under its policy.

    The bucket's access logs go to a log bucket of this stack rather than the audit stack's:
    a cross-stack log target would make the audit stack's bucket policy name this bucket and
    this stack import the log bucket, a dependency cycle.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        context: CustosContext,
        vpc: ec2.IVpc,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.access_log_bucket = access_log_bucket(self)
        # The policy is not secret, so S3-managed keys suffice; who may read it is IAM's job.
        self.policy_bucket = private_bucket(
            self,
            "PolicyBucket",
            access_logs=self.access_log_bucket,
            access_logs_prefix="policy-bucket/",
            encryption=s3.BucketEncryption.S3_MANAGED,
        )

        log_group = logs.LogGroup(
            self,
            "PolicyFunctionLogs",
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.policy_function = lambda_.Function(
            self,
            "PolicyFunction",
            runtime=RUNTIME,
            handler=HANDLER,
            code=function_code(skip_bundling=skip_bundling(self)),
            memory_size=512,
            timeout=Duration.seconds(10),
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            # No POWERTOOLS_SERVICE_NAME: the handler names its service, and the variable
            # would add a dimension to every metric.
            environment={
                "CUSTOS_POLICY_BUCKET": self.policy_bucket.bucket_name,
                "CUSTOS_POLICY_KEY": POLICY_KEY,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
        )
        # Only the one object, not grant_read's bucket-wide Get*/List*: head_object and
        # get_object of a given version are all the policy source calls.
        self.policy_function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[self.policy_bucket.arn_for_objects(POLICY_KEY)],
            )
        )
        validations = Validations.of(self.policy_function)
        for managed in ("AWSLambdaBasicExecutionRole", "AWSLambdaVPCAccessExecutionRole"):
            validations.acknowledge(
                Acknowledgment(
                    id="AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:"
                    f"policy/service-role/{managed}]",
                    reason="AWS-managed Lambda execution policy: only the log-write and "
                    "VPC network-interface permissions Lambda itself needs, kept current by AWS.",
                )
            )
        validations.acknowledge(
            Acknowledgment(
                id="AwsSolutions::AwsSolutions-IAM5[Resource::*]",
                reason="X-Ray PutTraceSegments and PutTelemetryRecords have no resource-level "
                "permissions, so active tracing needs Resource *; the S3 read is one object.",
            ),
            Acknowledgment(
                id="AwsSolutions::AwsSolutions-L1",
                reason="Pinned to Python 3.12: the bundle's binary wheels (pglast, "
                "pydantic-core) are installed for 3.12; move runtime and bundler together.",
            ),
        )
