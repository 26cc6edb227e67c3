"""The gateway: the proxy on ECS Fargate behind an internal Network Load Balancer.

Two secrets come from the operator, not from this stack:
- the TLS certificate and key clients see, in the secret ``custos/gateway-tls`` as JSON
  ``{"certificate": "<PEM chain>", "private_key": "<PEM key>"}``. The stack creates the
  secret with a placeholder, so tasks exit at start (closed) until the PEMs are in it. On
  the first deploy, put them there once the secret exists: CloudFormation keeps waiting
  for the service, ECS keeps starting tasks, and the first task after the change serves.
  A renewed certificate reaches the tasks with `aws ecs update-service --force-new-deployment`.
- each target database's credential (RDS secret JSON), either an existing secret named by
  ``secret_name`` or the secret this stack creates: its host, port, dbname and username
  (``custos_gateway``) are filled in and its password generated; create that login in the
  database with that password.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from aws_cdk import Acknowledgment, ArnFormat, Duration, Size, Stack, Validations
from aws_cdk import aws_applicationautoscaling as applicationautoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct, IConstruct

from custos.approvals.aws import BINDING_INDEX
from custos.config import GatewayConfig, LimitSettings
from stacks.approvals import ApprovalsStack
from stacks.audit_storage import AuditStorageStack
from stacks.config import CustosContext, TargetConfig
from stacks.keys import generated_key
from stacks.policy import POLICY_KEY, PolicyStack

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTAINER_NAME = "gateway"
TLS_SECRET_NAME = "custos/gateway-tls"  # noqa: S105 - the name, not a value
CREATED_SECRET_USERNAME = "custos_gateway"  # noqa: S105 - a login name
HTTPS_PORT = 443

# The image context is an allow-list of what proxy_task/Dockerfile copies, so a new
# directory in the repository (or a virtualenv) never bloats or leaks into the image.
IMAGE_CONTEXT_EXCLUDE = [
    "*",
    "!requirements.txt",
    "!pyproject.toml",
    "!setup.py",
    "!README.md",
    "!custos",
    "!proxy_task",
    "**/__pycache__",
    "**/*.pyc",
    "**/*.so",
]

# The config and the TLS material reach the process through here-documents on stdin and
# file descriptors 3 and 4, so nothing is written to disk (the root filesystem is read-only
# and the private key never lands in a file). Expanded variables are not re-parsed by the
# shell, so their content cannot break out; dash (the image's sh) feeds each through a pipe.
CONFIG_PATH = "/dev/stdin"
CERT_PATH = "/dev/fd/3"
KEY_PATH = "/dev/fd/4"
START_SCRIPT = """exec python -m proxy_task 0<<CUSTOS_CONFIG 3<<CUSTOS_CERT 4<<CUSTOS_KEY
$CUSTOS_CONFIG_DOCUMENT
CUSTOS_CONFIG
$CUSTOS_TLS_CERTIFICATE
CUSTOS_CERT
$CUSTOS_TLS_PRIVATE_KEY
CUSTOS_KEY
"""

# The gateway drains sessions for this long on SIGTERM; the NLB keeps a deregistering
# task's flows for as long, and ECS waits a little longer before SIGKILL.
SHUTDOWN_GRACE_SECONDS = int(LimitSettings().shutdown_grace_seconds)
CPU_TARGET_PERCENT = 60


class GatewayStack(Stack):
    """ECS cluster, Fargate service, NLB, autoscaling, alarms and the secrets they read."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        context: CustosContext,
        vpc: ec2.IVpc,
        audit: AuditStorageStack,
        policy: PolicyStack,
        approvals: ApprovalsStack | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.approvals = approvals
        sizing = context.gateway
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

        self.target_secrets = [self._target_secret(target) for target in context.targets]
        # UpstreamSettings holds one credential source, so the gateway serves the first
        # target; the others' secrets exist for the operator to fill but are not readable.
        upstream_secret = self.target_secrets[0]
        # The audit trail's pseudonym key: generated once, never shown; rotating it
        # would part the data-subject index's old pseudonyms from the new.
        self.audit_key_secret = generated_key(
            self, "AuditKeySecret", "Custos audit key: the data-subject index's pseudonyms (HMAC)"
        )
        # The masking key: pseudonyms in results (HMAC). Generated once, never shown;
        # rotating it changes every pseudonym (README: Masking, the key).
        self.masking_key_secret = generated_key(
            self,
            "MaskingKeySecret",
            "Custos masking key: the pseudonyms agents see in results (HMAC)",
        )
        self.tls_secret = secretsmanager.Secret(
            self,
            "TlsSecret",
            secret_name=TLS_SECRET_NAME,
            description="Custos gateway TLS: JSON {certificate, private_key}, PEM; "
            "replace the placeholder before the service starts",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps({"certificate": "REPLACE WITH PEM CHAIN"}),
                generate_string_key="private_key",
            ),
        )

        self.cluster = ecs.Cluster(
            self, "Cluster", vpc=vpc, container_insights_v2=ecs.ContainerInsights.ENABLED
        )
        task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=sizing.cpu,
            memory_limit_mib=sizing.memory_mib,
            runtime_platform=ecs.RuntimePlatform(
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
                cpu_architecture=ecs.CpuArchitecture.X86_64,
            ),
        )
        self.log_group = logs.LogGroup(self, "GatewayLogs", retention=logs.RetentionDays.ONE_YEAR)
        document = self._config_document(context, upstream_secret, policy, audit)
        task_definition.add_container(
            CONTAINER_NAME,
            image=ecs.ContainerImage.from_asset(
                str(REPO_ROOT),
                file="proxy_task/Dockerfile",
                exclude=IMAGE_CONTEXT_EXCLUDE,
            ),
            entry_point=["sh", "-c"],
            command=[START_SCRIPT],
            user="10001",
            readonly_root_filesystem=True,
            port_mappings=[ecs.PortMapping(container_port=sizing.port)],
            environment={
                "CUSTOS_CONFIG": CONFIG_PATH,
                "CUSTOS_CONFIG_DOCUMENT": document,
                # Where the audit stage writes its events (the role may only add items).
                "CUSTOS_AUDIT_TABLE": audit.events_table.table_name,
                # The image sets it too; the read-only filesystem depends on it.
                "PYTHONDONTWRITEBYTECODE": "1",
            },
            secrets={
                "CUSTOS_TLS_CERTIFICATE": ecs.Secret.from_secrets_manager(
                    self.tls_secret, "certificate"
                ),
                "CUSTOS_TLS_PRIVATE_KEY": ecs.Secret.from_secrets_manager(
                    self.tls_secret, "private_key"
                ),
            },
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="gateway",
                log_group=self.log_group,
                # The operational log must never stall client traffic; the evidence goes
                # to the audit table, whose writes the gateway waits for.
                mode=ecs.AwsLogDriverMode.NON_BLOCKING,
                max_buffer_size=Size.mebibytes(25),
            ),
            stop_timeout=Duration.seconds(SHUTDOWN_GRACE_SECONDS + 10),
        )

        self.task_security_group = ec2.SecurityGroup(
            self,
            "TaskSecurityGroup",
            vpc=vpc,
            description="Custos gateway tasks",
            allow_all_outbound=False,
        )
        # The NLB has no security group and, with client IP preservation off, connects from
        # its own addresses in the VPC: the VPC CIDR covers both it and its health checks.
        self.task_security_group.add_ingress_rule(
            ec2.Peer.ipv4(vpc.vpc_cidr_block),
            ec2.Port.tcp(sizing.port),
            "PostgreSQL clients through the NLB, and its health checks",
        )
        # Databases and OIDC issuers may live outside AWS, so egress is by port, not by peer.
        for port in sorted({target.port for target in context.targets}):
            self.task_security_group.add_egress_rule(
                ec2.Peer.any_ipv4(), ec2.Port.tcp(port), "upstream PostgreSQL"
            )
        self.task_security_group.add_egress_rule(
            ec2.Peer.any_ipv4(),
            ec2.Port.tcp(HTTPS_PORT),
            "AWS APIs through the VPC endpoints, OIDC discovery and JWKS",
        )

        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=self.cluster,
            task_definition=task_definition,
            desired_count=sizing.desired_count,
            vpc_subnets=private,
            assign_public_ip=False,
            security_groups=[self.task_security_group],
            # No deployment circuit breaker: it would fail (and roll back) the first deploy
            # before the operator can put the certificate in; CloudFormation still rolls back
            # a deployment that never becomes stable.
            min_healthy_percent=100,
            max_healthy_percent=200,
            health_check_grace_period=Duration.seconds(60),
        )

        self.load_balancer = elbv2.NetworkLoadBalancer(
            self,
            "LoadBalancer",
            vpc=vpc,
            internet_facing=False,
            vpc_subnets=private,
            cross_zone_enabled=True,
        )
        # Plain TCP: PostgreSQL negotiates TLS inside its own protocol (SSLRequest), so the
        # gateway terminates TLS; an NLB TLS listener would break every client.
        listener = self.load_balancer.add_listener(
            "Postgres", port=sizing.port, protocol=elbv2.Protocol.TCP
        )
        self.target_group = listener.add_targets(
            "Gateway",
            port=sizing.port,
            protocol=elbv2.Protocol.TCP,
            targets=[
                self.service.load_balancer_target(
                    container_name=CONTAINER_NAME, container_port=sizing.port
                )
            ],
            preserve_client_ip=False,
            deregistration_delay=Duration.seconds(SHUTDOWN_GRACE_SECONDS),
            health_check=elbv2.HealthCheck(
                protocol=elbv2.Protocol.TCP,
                port="traffic-port",
                healthy_threshold_count=2,
                unhealthy_threshold_count=2,
                interval=Duration.seconds(10),
            ),
        )

        self._grant_task_role(task_definition.task_role, upstream_secret, audit, policy)
        self._autoscale(
            sizing.min_capacity, sizing.max_capacity, sizing.connections_per_task_target
        )
        self._alarms(context.alarm_email)
        self._acknowledge_findings(task_definition)

    def _target_secret(self, target: TargetConfig) -> secretsmanager.ISecret:
        if target.secret_name is not None:
            return secretsmanager.Secret.from_secret_name_v2(
                self, f"Target-{target.name}", target.secret_name
            )
        template = {
            "engine": "postgres",
            "host": target.host,
            "port": target.port,
            "dbname": target.dbname,
            "username": CREATED_SECRET_USERNAME,
        }
        return secretsmanager.Secret(
            self,
            f"Target-{target.name}",
            description=f"Custos upstream credential for target {target.name}: create the "
            f"login {CREATED_SECRET_USERNAME} with this password in the database",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps(template),
                generate_string_key="password",
                exclude_punctuation=True,
                password_length=40,
            ),
        )

    def _config_document(
        self,
        context: CustosContext,
        upstream_secret: secretsmanager.ISecret,
        policy: PolicyStack,
        audit: AuditStorageStack,
    ) -> str:
        """The gateway's YAML config as JSON (valid YAML), checked against its model now."""
        config: dict[str, Any] = {
            "listen": f"0.0.0.0:{context.gateway.port}",
            # An imported secret's ARN lacks its random suffix; its name is exact.
            "upstream": {
                "secret_id": upstream_secret.secret_full_arn or upstream_secret.secret_name
            },
            "tls": {"cert_file": CERT_PATH, "key_file": KEY_PATH},
            "issuers": [
                {"issuer": issuer.issuer, "audiences": list(issuer.audiences)}
                for issuer in context.oidc_issuers
            ],
            "policy": {
                "s3_bucket": policy.policy_bucket.bucket_name,
                "s3_key": POLICY_KEY,
                "decision_point": "in_process",
            },
            # Every session and statement, durable in the events table before it runs.
            "audit": {
                "store": "dynamodb",
                "table": audit.events_table.table_name,
                "key": {"key_secret": self.audit_key_secret.secret_arn},
                "retention_days": context.events_ttl_days,
            },
            # Results a mask rule names are masked; pseudonyms keyed by a secret of their own.
            "masking": {"key_secret": self.masking_key_secret.secret_arn},
        }
        if self.approvals is not None:
            # A statement a rule holds starts the approvals workflow and waits on its table.
            config["approvals"] = {
                "backend": "aws",
                "state_machine_arn": self.approvals.state_machine.state_machine_arn,
                "table": self.approvals.table.table_name,
                "url": self.approvals.api.url,
                "key": {"key_secret": self.approvals.link_key_secret.secret_arn},
            }
        # Tokens are placeholder strings here, which the model accepts; a field the gateway
        # would reject fails the synth instead of every task at start.
        GatewayConfig.model_validate(config)
        return self.to_json_string(config)

    def _grant_task_role(
        self,
        role: iam.IRole,
        upstream_secret: secretsmanager.ISecret,
        audit: AuditStorageStack,
        policy: PolicyStack,
    ) -> None:
        """Exactly what the running gateway calls; each statement names its resources."""
        upstream_secret.grant_read(role)
        self.audit_key_secret.grant_read(role)
        self.masking_key_secret.grant_read(role)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["dynamodb:PutItem", "dynamodb:BatchWriteItem"],
                resources=[audit.events_table.table_arn],
            )
        )
        # DynamoDB encrypts with the audit key on the caller's behalf; Decrypt is among the
        # calls it makes for a writer (unwrapping the table key), and ViaService keeps all
        # three usable only through DynamoDB, never to decrypt audit data directly.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt"],
                resources=[audit.key.key_arn],
                conditions={
                    "StringEquals": {"kms:ViaService": f"dynamodb.{self.region}.amazonaws.com"}
                },
            )
        )
        # HeadObject and versioned GetObject are all the S3 policy source calls. Without
        # s3:ListBucket a missing object answers 403 rather than 404; the gateway refuses
        # to start either way, so bucket-wide listing is not worth granting.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[policy.policy_bucket.arn_for_objects(POLICY_KEY)],
            )
        )
        # The Lambda decision point is the gateway's other documented mode (policy.
        # decision_point: lambda), selectable without redeploying the function's stack.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["lambda:InvokeFunction"],
                resources=[policy.policy_function.function_arn],
            )
        )
        if self.approvals is not None:
            self._grant_approvals(role, self.approvals)

    def _grant_approvals(self, role: iam.IRole, approvals: ApprovalsStack) -> None:
        """What AwsApprovals calls: its workflow's executions and the approvals table."""
        approvals.link_key_secret.grant_read(role)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["states:StartExecution"],
                resources=[approvals.state_machine.state_machine_arn],
            )
        )
        # An execution is named after its request: the role names the machine's executions.
        executions = self.format_arn(
            service="states",
            resource="execution",
            resource_name=f"{approvals.workflow_name}:*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(actions=["states:StopExecution"], resources=[executions])
        )
        acknowledge(
            cast(iam.Role, role).node.find_child("DefaultPolicy"),
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:"
            f"{self.region}:{self.account}:execution:{approvals.workflow_name}:*]",
            "A withdrawn request's execution is stopped by its name, the request's id, which "
            "the gateway makes per request; the wildcard covers only this workflow's.",
        )
        table = approvals.table.table_arn
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "dynamodb:BatchGetItem",
                    "dynamodb:DeleteItem",
                    "dynamodb:PutItem",
                    "dynamodb:UpdateItem",
                ],
                resources=[table],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["dynamodb:Query"], resources=[f"{table}/index/{BINDING_INDEX}"]
            )
        )

    def _autoscale(self, min_capacity: int, max_capacity: int, connections_per_task: int) -> None:
        scaling = self.service.auto_scale_task_count(
            min_capacity=min_capacity, max_capacity=max_capacity
        )
        scaling.scale_on_cpu_utilization(
            "Cpu",
            target_utilization_percent=CPU_TARGET_PERCENT,
            scale_in_cooldown=Duration.minutes(5),
            scale_out_cooldown=Duration.minutes(1),
        )
        # The L2 target tracking takes only a single metric, and connections per task needs
        # metric math, so this one policy is written at the CloudFormation level.
        # ScalableTaskCount keeps its ScalableTarget private, under this construct id.
        target = cast(applicationautoscaling.ScalableTarget, scaling.node.find_child("Target"))
        applicationautoscaling.CfnScalingPolicy(
            self,
            "ConnectionsScaling",
            policy_name=f"{self.stack_name}-connections-per-task",
            policy_type="TargetTrackingScaling",
            scaling_target_id=target.scalable_target_id,
            target_tracking_scaling_policy_configuration=applicationautoscaling.CfnScalingPolicy.TargetTrackingScalingPolicyConfigurationProperty(
                target_value=connections_per_task,
                scale_in_cooldown=300,
                scale_out_cooldown=60,
                customized_metric_specification=applicationautoscaling.CfnScalingPolicy.CustomizedMetricSpecificationProperty(
                    metrics=self._connections_per_task_queries()
                ),
            ),
        )

    def _connections_per_task_queries(
        self,
    ) -> list[applicationautoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty]:
        """Open client connections per healthy task, as metric math.

        The NLB counts flows per target group, not per target; target tracking needs a
        metric that falls as tasks are added, so divide by the healthy targets. With none
        healthy the quotient has no data point and this policy waits; the CPU policy and
        the unhealthy-target alarm cover that case.
        """
        policy = applicationautoscaling.CfnScalingPolicy
        dimensions = [
            policy.TargetTrackingMetricDimensionProperty(
                name="LoadBalancer", value=self.load_balancer.load_balancer_full_name
            ),
            policy.TargetTrackingMetricDimensionProperty(
                name="TargetGroup", value=self.target_group.target_group_full_name
            ),
        ]

        def nlb_metric(
            query_id: str, name: str, statistic: str
        ) -> applicationautoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty:
            return policy.TargetTrackingMetricDataQueryProperty(
                id=query_id,
                return_data=False,
                metric_stat=policy.TargetTrackingMetricStatProperty(
                    metric=policy.TargetTrackingMetricProperty(
                        namespace="AWS/NetworkELB", metric_name=name, dimensions=dimensions
                    ),
                    stat=statistic,
                ),
            )

        return [
            nlb_metric("flows", "ActiveFlowCount_TCP", "Average"),
            nlb_metric("healthy", "HealthyHostCount", "Minimum"),
            policy.TargetTrackingMetricDataQueryProperty(
                id="per_task",
                expression="flows / healthy",
                label="Connections per healthy task",
                return_data=True,
            ),
        ]

    def _alarms(self, alarm_email: str | None) -> None:
        service_dimensions = {
            "ClusterName": self.cluster.cluster_name,
            "ServiceName": self.service.service_name,
        }
        running = cloudwatch.Metric(
            namespace="ECS/ContainerInsights",
            metric_name="RunningTaskCount",
            dimensions_map=service_dimensions,
            statistic="Minimum",
            period=Duration.minutes(1),
        )
        desired = cloudwatch.Metric(
            namespace="ECS/ContainerInsights",
            metric_name="DesiredTaskCount",
            dimensions_map=service_dimensions,
            statistic="Maximum",
            period=Duration.minutes(1),
        )
        self.alarms = [
            cloudwatch.Alarm(
                self,
                "CpuHigh",
                alarm_description="Gateway CPU above 85% for 15 minutes: autoscaling is at "
                "its maximum or cannot keep up; raise gateway.max_capacity or cpu",
                metric=self.service.metric_cpu_utilization(period=Duration.minutes(5)),
                threshold=85,
                evaluation_periods=3,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            ),
            cloudwatch.Alarm(
                self,
                "UnhealthyTargets",
                alarm_description="A gateway task fails the NLB's TCP health check; see the "
                "gateway log group for why it is not accepting connections",
                metric=self.target_group.metrics.un_healthy_host_count(
                    period=Duration.minutes(1), statistic="Maximum"
                ),
                threshold=0,
                evaluation_periods=3,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            ),
            cloudwatch.Alarm(
                self,
                "TasksBelowDesired",
                alarm_description="Fewer gateway tasks run than desired for 5 minutes: tasks "
                "are failing to start (check the TLS secret and the stopped tasks' reason)",
                metric=cloudwatch.MathExpression(
                    expression="desired - running",
                    using_metrics={"desired": desired, "running": running},
                    period=Duration.minutes(1),
                ),
                threshold=0,
                evaluation_periods=5,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                # No data about the service is itself a reason to look.
                treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
            ),
        ]
        self.alarm_topic: sns.Topic | None = None
        if alarm_email is None:
            return
        key = kms.Key(
            self,
            "AlarmTopicKey",
            description="Custos gateway alarm notifications",
            enable_key_rotation=True,
        )
        # CloudWatch publishes to the encrypted topic with this key.
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
            )
        )
        self.alarm_topic = sns.Topic(
            self, "AlarmTopic", master_key=key, enforce_ssl=True, display_name="Custos gateway"
        )
        self.alarm_topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        for alarm in self.alarms:
            alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.alarm_topic))

    def _acknowledge_findings(self, task_definition: ecs.FargateTaskDefinition) -> None:
        """The cdk-nag AwsSolutions findings this stack accepts, each where it arises."""
        acknowledge(
            task_definition,
            "AwsSolutions-ECS2",
            "The environment holds only non-secret settings (the config document names a "
            "bucket, a secret ARN and issuers); the TLS certificate and key are ECS secrets "
            "from Secrets Manager.",
        )
        execution_policy = task_definition.obtain_execution_role().node.find_child("DefaultPolicy")
        acknowledge(
            execution_policy,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken has no resource-level permissions; the image pull "
            "actions themselves are scoped to the CDK asset repository.",
        )
        acknowledge(
            self.task_security_group,
            "AwsSolutions-EC23",
            "The rule cannot evaluate the VPC CIDR token; the only ingress is the gateway "
            "port from the VPC's own CIDR, never 0.0.0.0/0.",
        )
        acknowledge(
            self.load_balancer,
            "AwsSolutions-ELB2",
            "NLB access logs record only TLS listeners; this listener is TCP because "
            "PostgreSQL negotiates TLS in-protocol, so the log would stay empty. VPC flow "
            "logs record the connections and the audit table records every session.",
        )
        acknowledge(
            self.tls_secret,
            "AwsSolutions-SMG4",
            "A certificate is renewed by its issuing CA, not by a Lambda; the operator "
            "replaces the PEMs and forces a new deployment.",
        )
        acknowledge(
            self.audit_key_secret,
            "AwsSolutions-SMG4",
            "The audit key keys the data-subject index's pseudonyms: a rotated key would "
            "part every access recorded before from those after, so it is never rotated.",
        )
        acknowledge(
            self.masking_key_secret,
            "AwsSolutions-SMG4",
            "The masking key keys the pseudonyms agents see: a rotated key changes every "
            "pseudonym, so results before and after no longer join. It is rotated by hand, "
            "when the operator chooses (README: Masking, the key).",
        )
        for secret in self.target_secrets:
            if isinstance(secret, secretsmanager.Secret):
                acknowledge(
                    secret,
                    "AwsSolutions-SMG4",
                    "The database login is created by the database owner from this "
                    "secret; rotation needs a rotation Lambda with network access and "
                    "rights to that database, which the owner attaches when ready. The "
                    "gateway rereads the secret after a password failure.",
                )


def acknowledge(construct: IConstruct, rule: str, reason: str) -> None:
    """Accepts one cdk-nag finding on `construct` and its children, with the reason."""
    Validations.of(construct).acknowledge(Acknowledgment(id=rule, reason=reason))
