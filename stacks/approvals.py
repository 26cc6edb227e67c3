"""Just-in-time approvals on AWS: the workflow, the approvers' mail, their links' API.

- The approvals table: one item per request (custos/approvals/aws.py), the `by_binding`
  index the gateway finds a statement's newest request by, TTL on `delete_after`.
- A Step Functions standard workflow per request, which the gateway starts: Notify (a
  Lambda called with `.waitForTaskToken`) keeps the task token with the request and mails
  each approver, then waits for the callback, as long as the request's `timeout_seconds`.
  An approval goes on to "Record decision", a denial ("Denied") to "Record denial", a
  timeout (or a failure to notify anyone) to "Record expiry", each the record Lambda.
- The approvals topic (KMS-encrypted, TLS only) with one email subscription per approver,
  whose filter policy admits only messages whose `approver` attribute names them.
- The approvals API (REST, API Gateway): GET /requests/{id} and POST
  /requests/{id}/decision on the callback Lambda, throttled, with access logs that never
  hold a query string (the link's ticket is in it).
- The link-signing key: a generated secret that the gateway and the Lambdas read.

The gateway stack grants its task what it calls here and names all of it in its config.
"""

from __future__ import annotations

import json
from typing import Any, cast

from aws_cdk import (
    Acknowledgment,
    ArnFormat,
    CfnOutput,
    Duration,
    RemovalPolicy,
    Stack,
    Validations,
)
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct, IConstruct

from custos.approvals.aws import (
    BINDING,
    BINDING_INDEX,
    CREATED_AT,
    DELETE_AFTER,
    ID,
)
from lambdas.approvals_notify.messages import APPROVER_ATTRIBUTE
from stacks.audit_storage import AuditStorageStack
from stacks.config import ApprovalsContext, CustosContext, skip_bundling
from stacks.keys import generated_key
from stacks.lambda_code import function_code, logged_function

NOTIFY_HANDLER = "lambdas.approvals_notify.handler.handler"
CALLBACK_HANDLER = "lambdas.approvals_callback.handler.handler"
RECORD_HANDLER = "lambdas.approvals_record.handler.handler"
API_STAGE = "approvals"
DENIED_ERROR = "Denied"  # the callback's SendTaskFailure error for a denial
# The notifier's passing failures (Lambda reports an exception by its class's name).
NOTIFY_RETRIED = ("ApprovalsUnavailable", "NotificationFailed")


class ApprovalsStack(Stack):
    """The approvals table, workflow, topic, API and link-signing key."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        context: CustosContext,
        approvals: ApprovalsContext,
        audit: AuditStorageStack | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.table = dynamodb.Table(
            self,
            "Requests",
            partition_key=dynamodb.Attribute(name=ID, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=DELETE_AFTER,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.table.add_global_secondary_index(
            index_name=BINDING_INDEX,
            partition_key=dynamodb.Attribute(name=BINDING, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=CREATED_AT, type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        # Signs approvers' links and binds retry grants to their statements; generated once.
        self.link_key_secret = generated_key(
            self,
            "LinkKeySecret",
            "Custos approvals key: signs approvers' links, binds retry grants",
        )
        self.topic_key = kms.Key(
            self,
            "TopicKey",
            description="Custos approvals: the approvers' email topic",
            enable_key_rotation=True,
        )
        self.topic = sns.Topic(
            self,
            "Topic",
            master_key=self.topic_key,
            enforce_ssl=True,
            display_name="Custos approvals",
        )
        self.subscriptions = [
            sns.Subscription(
                self,
                f"Approver-{approver.id}",
                topic=self.topic,
                protocol=sns.SubscriptionProtocol.EMAIL,
                endpoint=approver.email,
                filter_policy={
                    APPROVER_ATTRIBUTE: sns.SubscriptionFilter.string_filter(
                        allowlist=[approver.id]
                    )
                },
            )
            for approver in approvals.everyone
        ]
        directory = json.dumps(
            {
                group: [member.model_dump() for member in members]
                for group, members in approvals.approvers.items()
            },
            separators=(",", ":"),
        )
        shared = {
            "APPROVALS_TABLE": self.table.table_name,
            "APPROVALS_TOPIC": self.topic.topic_arn,
            "APPROVERS": directory,
        }
        code = function_code(skip_bundling=skip_bundling(self))
        self.callback = self._function(
            "Callback",
            code,
            CALLBACK_HANDLER,
            {
                **shared,
                "LINK_KEY_SECRET": self.link_key_secret.secret_arn,
                "DECIDE_MINUTES": str(approvals.decide_minutes),
            },
        )
        self.api = self._api(approvals)
        self.notify = self._function(
            "Notifier",
            code,
            NOTIFY_HANDLER,
            {
                **shared,
                "LINK_KEY_SECRET": self.link_key_secret.secret_arn,
                "API_URL": self.api.url,
            },
        )
        recording = dict(shared)
        if audit is not None:
            recording["AUDIT_TABLE"] = audit.events_table.table_name
            recording["AUDIT_RETENTION_DAYS"] = str(context.events_ttl_days)
        self.record = self._function("Recorder", code, RECORD_HANDLER, recording)
        # Named, so that the callback's role can name it without depending on it: the
        # workflow invokes the notifier, whose links lead to the API, which calls back.
        self.workflow_name = f"{self.stack_name}-Workflow"
        self.workflow_arn = self.format_arn(
            service="states",
            resource="stateMachine",
            resource_name=self.workflow_name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.state_machine = self._workflow()
        self._grant(audit)
        self._acknowledge_findings()
        # The gateway stack names these in the gateway's config (approvals:); the API's
        # address is the RestApi's own output.
        CfnOutput(self, "StateMachineArn", value=self.state_machine.state_machine_arn)
        CfnOutput(self, "TableName", value=self.table.table_name)
        CfnOutput(self, "LinkKeySecretArn", value=self.link_key_secret.secret_arn)

    def _function(
        self, construct_id: str, code: lambda_.Code, handler: str, environment: dict[str, str]
    ) -> lambda_.Function:
        """A function whose role may write its own log group; _grant adds the rest."""
        return logged_function(
            self,
            construct_id,
            code=code,
            handler=handler,
            environment=environment,
            timeout=Duration.seconds(30),
        )

    def _api(self, approvals: ApprovalsContext) -> apigateway.RestApi:
        self.access_logs = logs.LogGroup(
            self,
            "ApiAccessLogs",
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )
        api = apigateway.RestApi(
            self,
            "Api",
            description="Custos approvals: the pages approvers' email links open",
            endpoint_types=[apigateway.EndpointType.REGIONAL],
            # API Gateway logs to CloudWatch through the account's role for it.
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN,
            deploy_options=apigateway.StageOptions(
                stage_name=API_STAGE,
                # Standard fields only: the resource path is the route's template, so the
                # ticket in a link's query string is never logged.
                access_log_destination=apigateway.LogGroupLogDestination(self.access_logs),
                access_log_format=apigateway.AccessLogFormat.json_with_standard_fields(
                    caller=True,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
                # Errors only, and never the data: INFO would log query strings and bodies.
                logging_level=apigateway.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,
                metrics_enabled=True,
                throttling_rate_limit=approvals.api_rate_limit,
                throttling_burst_limit=approvals.api_burst_limit,
            ),
        )
        # Only declared parameters pass; the ticket's seal and the form are the callback's.
        validator = apigateway.RequestValidator(
            self,
            "ApiValidator",
            rest_api=api,
            validate_request_parameters=True,
            validate_request_body=True,
        )
        callback = apigateway.LambdaIntegration(self.callback, allow_test_invoke=False)
        request = api.root.add_resource("requests").add_resource("{id}")
        # The ticket is optional here: the requester's copy of the address has none, and
        # the callback's page says why it shows nothing, where API Gateway would answer JSON.
        request.add_method(
            "GET",
            callback,
            request_parameters={"method.request.querystring.t": False},
            request_validator=validator,
        )
        request.add_resource("decision").add_method("POST", callback, request_validator=validator)
        return api

    def _workflow(self) -> sfn.StateMachine:
        request_id = sfn.JsonPath.string_at("$.request_id")
        notify = tasks.LambdaInvoke(
            self,
            "Notify",
            comment="Mail the approvers, then wait for the callback, until the request expires",
            lambda_function=self.notify,
            integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
            payload=sfn.TaskInput.from_object(
                {"request_id": request_id, "task_token": sfn.JsonPath.task_token}
            ),
            task_timeout=sfn.Timeout.at("$.timeout_seconds"),
            result_path="$.decision",
        )
        # Named errors only: a wildcard would retry a denial too, mailing everyone again.
        notify.add_retry(
            errors=list(NOTIFY_RETRIED),
            interval=Duration.seconds(5),
            max_attempts=3,
            backoff_rate=2,
        )

        def record(name: str, outcome: str) -> tasks.LambdaInvoke:
            step = tasks.LambdaInvoke(
                self,
                name,
                lambda_function=self.record,
                payload=sfn.TaskInput.from_object({"request_id": request_id, "outcome": outcome}),
                result_path="$.recorded",
            )
            step.add_retry(
                errors=["States.TaskFailed"],
                interval=Duration.seconds(2),
                max_attempts=3,
                backoff_rate=2,
            )
            return step

        expiry = record("Record expiry", "expired")
        notify.add_catch(expiry, errors=["States.Timeout"], result_path="$.error")
        notify.add_catch(
            record("Record denial", "denied"), errors=[DENIED_ERROR], result_path="$.error"
        )
        # Nobody could be notified (no approver in the group, SNS refused): nobody can
        # decide, so the request ends now rather than at its expiry.
        notify.add_catch(expiry, errors=["States.ALL"], result_path="$.error")
        notify.next(record("Record decision", "decided"))
        self.workflow_logs = logs.LogGroup(
            self,
            "WorkflowLogs",
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=RemovalPolicy.RETAIN,
        )
        return sfn.StateMachine(
            self,
            "Workflow",
            state_machine_name=self.workflow_name,
            definition_body=sfn.DefinitionBody.from_chainable(notify),
            state_machine_type=sfn.StateMachineType.STANDARD,
            # Every event, without the data: a denial's cause quotes the approver's reason.
            logs=sfn.LogOptions(
                destination=self.workflow_logs,
                level=sfn.LogLevel.ALL,
                include_execution_data=False,
            ),
            tracing_enabled=True,
        )

    def _grant(self, audit: AuditStorageStack | None) -> None:
        """Exactly what each function calls; every statement names its resources."""
        table = self.table.table_arn
        for function, actions in (
            (self.notify, ["dynamodb:GetItem", "dynamodb:UpdateItem"]),
            (self.callback, ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]),
            (self.record, ["dynamodb:GetItem", "dynamodb:UpdateItem"]),
        ):
            function.add_to_role_policy(iam.PolicyStatement(actions=actions, resources=[table]))
            function.add_to_role_policy(
                iam.PolicyStatement(actions=["sns:Publish"], resources=[self.topic.topic_arn])
            )
            # Publishing to the encrypted topic: SNS asks for a data key on the caller's behalf.
            function.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["kms:Decrypt", "kms:GenerateDataKey"],
                    resources=[self.topic_key.key_arn],
                    conditions={
                        "StringEquals": {"kms:ViaService": f"sns.{self.region}.amazonaws.com"}
                    },
                )
            )
        for function in (self.notify, self.callback):
            self.link_key_secret.grant_read(function)
        self.callback.add_to_role_policy(
            iam.PolicyStatement(
                actions=["states:SendTaskFailure", "states:SendTaskSuccess"],
                resources=[self.workflow_arn],
            )
        )
        if audit is None:
            return
        self.record.add_to_role_policy(
            iam.PolicyStatement(
                actions=["dynamodb:BatchWriteItem", "dynamodb:PutItem"],
                resources=[audit.events_table.table_arn],
            )
        )
        # The events table is encrypted under the audit key; DynamoDB uses it for the writer.
        self.record.add_to_role_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
                resources=[audit.key.key_arn],
                conditions={
                    "StringEquals": {"kms:ViaService": f"dynamodb.{self.region}.amazonaws.com"}
                },
            )
        )

    def _acknowledge_findings(self) -> None:
        """The cdk-nag AwsSolutions findings this stack accepts, each where it arises."""
        for function in (self.notify, self.callback, self.record):
            acknowledge(
                function,
                "AwsSolutions-L1",
                "Pinned to Python 3.12: the bundle's binary wheels (pglast, pydantic-core) "
                "are installed for 3.12; move runtime and bundler together.",
            )
        acknowledge(
            self.link_key_secret,
            "AwsSolutions-SMG4",
            "The key signs the links in approvers' mailboxes and binds approved retries to "
            "their statements: rotating it voids every pending link and grant, and the "
            "gateway reads it at start; rotate it by hand, between requests.",
        )
        acknowledge(
            self.api,
            "AwsSolutions-APIG4",
            "The approvals pages are opened from email links by people outside any IAM or "
            "Cognito identity; each link and form carries an HMAC ticket bound to one "
            "request and one approver, expiring, and accepted once.",
        )
        acknowledge(
            self.api,
            "AwsSolutions-COG4",
            "No Cognito user pool: approvers are authorised by their signed, single-use "
            "link tickets, checked by the callback against the approver directory.",
        )
        acknowledge(
            self.api,
            "AwsSolutions-APIG3",
            "Two routes on one Lambda, throttled per stage; every request without a valid "
            "ticket is refused before it reads anything. Attach a WAF web ACL where the "
            "organisation runs one for its public endpoints.",
        )
        cloud_watch_role = self.api.node.find_child("CloudWatchRole")
        acknowledge(
            cloud_watch_role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonAPIGatewayPushToCloudWatchLogs]",
            "API Gateway's account-level logging role: the AWS-managed policy is the one "
            "API Gateway documents for writing its access and execution logs.",
        )
        workflow_policy = cast(iam.Role, self.state_machine.role).node.find_child("DefaultPolicy")
        acknowledge(
            workflow_policy,
            "AwsSolutions-IAM5[Resource::*]",
            "CloudWatch Logs delivery and X-Ray tracing have no resource-level permissions; "
            "the Lambda invocations are the two functions' own ARNs.",
        )
        for function in (self.notify, self.record):
            logical_id = self.get_logical_id(cast(lambda_.CfnFunction, function.node.default_child))
            acknowledge(
                workflow_policy,
                f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>:*]",
                "The workflow invokes its own two functions; Step Functions names their "
                "versions and aliases too (ARN:*), as its Lambda integration grants it.",
            )


def acknowledge(construct: IConstruct, rule: str, reason: str) -> None:
    """Accepts one cdk-nag finding on `construct` and its children, with the reason."""
    Validations.of(construct).acknowledge(Acknowledgment(id=f"AwsSolutions::{rule}", reason=reason))
