"""The policy stack: a private versioned bucket, and a Lambda that may read one object of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aws_cdk import DockerImage
from aws_cdk.assertions import Match, Template
from cdk_fixtures import BLOCK_ALL, CdkSynth

from stacks.lambda_code import BundlingFailed, LocalBundler

# The local bundler never runs Docker; the CDK only insists an image is named.
UNUSED_IMAGE = DockerImage.from_registry("unused")


@pytest.fixture(scope="module")
def policy(cdk_synth: CdkSynth) -> Template:
    return cdk_synth.templates["Custos-Policy"]


def _resources(template: Template, resource_type: str) -> dict[str, Any]:
    found: dict[str, Any] = template.find_resources(resource_type)
    return found


def _policy_bucket_id(policy: Template) -> str:
    found = policy.find_resources(
        "AWS::S3::Bucket", {"Properties": {"LoggingConfiguration": Match.any_value()}}
    )
    assert len(found) == 1
    return next(iter(found))


def _function(policy: Template) -> dict[str, Any]:
    (function,) = _resources(policy, "AWS::Lambda::Function").values()
    props: dict[str, Any] = function["Properties"]
    return props


def test_buckets_are_versioned_encrypted_private_tls_only_and_retained(policy: Template) -> None:
    buckets = _resources(policy, "AWS::S3::Bucket")
    assert len(buckets) == 2  # the policy bucket and its access-log bucket
    for bucket_id, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert props["PublicAccessBlockConfiguration"] == BLOCK_ALL
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
            "ServerSideEncryptionByDefault"
        ] == {"SSEAlgorithm": "AES256"}
        assert bucket["DeletionPolicy"] == "Retain"
        policy.has_resource_properties(
            "AWS::S3::BucketPolicy",
            {
                "Bucket": {"Ref": bucket_id},
                "PolicyDocument": {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Deny",
                                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                }
                            )
                        ]
                    )
                },
            },
        )


def test_policy_bucket_logs_to_the_log_bucket(policy: Template) -> None:
    bucket_id = _policy_bucket_id(policy)
    logging = _resources(policy, "AWS::S3::Bucket")[bucket_id]["Properties"]["LoggingConfiguration"]
    (log_bucket_id,) = set(_resources(policy, "AWS::S3::Bucket")) - {bucket_id}
    assert logging["DestinationBucketName"] == {"Ref": log_bucket_id}


def test_function_runtime_handler_tracing_and_logs(policy: Template) -> None:
    function = _function(policy)
    assert function["Runtime"] == "python3.12"
    assert function["Handler"] == "lambdas.policy_eval.handler.handler"
    assert function["TracingConfig"] == {"Mode": "Active"}
    (log_group_id,) = _resources(policy, "AWS::Logs::LogGroup")
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": log_group_id}
    policy.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": 365})


def test_function_runs_in_the_private_subnets(policy: Template) -> None:
    subnets = _function(policy)["VpcConfig"]["SubnetIds"]
    assert len(subnets) == 2
    for subnet in subnets:
        assert "PrivateSubnet" in subnet["Fn::ImportValue"]


def test_function_environment_names_the_policy_object(policy: Template) -> None:
    assert _function(policy)["Environment"]["Variables"] == {
        "CUSTOS_POLICY_BUCKET": {"Ref": _policy_bucket_id(policy)},
        "CUSTOS_POLICY_KEY": "policy.yaml",
        "POWERTOOLS_METRICS_NAMESPACE": "Custos",
    }


def test_function_may_read_only_the_policy_object(policy: Template) -> None:
    (role_policy,) = _resources(policy, "AWS::IAM::Policy").values()
    statements = role_policy["Properties"]["PolicyDocument"]["Statement"]
    s3_statements = [
        statement
        for statement in statements
        if any(action.startswith("s3:") for action in statement["Action"])
    ]
    assert s3_statements == [
        {
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Effect": "Allow",
            "Resource": {
                "Fn::Join": [
                    "",
                    [{"Fn::GetAtt": [_policy_bucket_id(policy), "Arn"]}, "/policy.yaml"],
                ]
            },
        }
    ]
    wildcard = [statement for statement in statements if statement["Resource"] == "*"]
    assert [statement["Action"] for statement in wildcard] == [
        ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]
    ]
    # No KMS permission is needed: the bucket uses S3-managed keys.
    assert not any("kms:" in str(statement["Action"]) for statement in statements)


def test_unbundled_asset_holds_only_the_source_packages(
    cdk_synth: CdkSynth, policy: Template
) -> None:
    asset_hash = _function(policy)["Code"]["S3Key"].removesuffix(".zip")
    asset = cdk_synth.outdir / f"asset.{asset_hash}"
    assert sorted(path.name for path in asset.iterdir()) == ["custos", "lambdas"]
    assert (asset / "lambdas" / "policy_eval" / "handler.py").is_file()
    assert (asset / "custos" / "policy").is_dir()
    assert not list(asset.rglob("__pycache__"))


def _source_tree(root: Path, requirements: str) -> Path:
    for package in ("custos", "lambdas"):
        (root / package / "__pycache__").mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        (root / package / "__pycache__" / "x.pyc").write_bytes(b"")
    (root / "requirements.txt").write_text(requirements)
    return root


def test_local_bundler_copies_source_and_installs_requirements(tmp_path: Path) -> None:
    # An empty requirements file keeps pip offline; the real one needs PyPI.
    source = _source_tree(tmp_path / "src", "# nothing\n")
    output = tmp_path / "out"
    output.mkdir()
    assert LocalBundler(source).try_bundle(str(output), image=UNUSED_IMAGE) is True
    assert (output / "custos" / "__init__.py").is_file()
    assert (output / "lambdas" / "__init__.py").is_file()
    assert not list(output.rglob("__pycache__"))


def test_local_bundler_failure_says_how_to_proceed(tmp_path: Path) -> None:
    source = _source_tree(tmp_path / "src", "./no-such-wheel-1.0-py3-none-any.whl\n")
    output = tmp_path / "out"
    output.mkdir()
    with pytest.raises(BundlingFailed, match="custos:skip_bundling=true"):
        LocalBundler(source).try_bundle(str(output), image=UNUSED_IMAGE)
