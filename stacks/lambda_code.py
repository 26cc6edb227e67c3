"""The Lambdas' code asset, bundled on this machine because synth cannot use Docker.

The bundle is ``custos/`` and ``lambdas/`` plus the pinned runtime dependencies from
``requirements.txt``, installed as manylinux wheels for the Lambda's Python. Installing them
needs PyPI, so the context flag ``custos:skip_bundling`` (tests, quick synths) makes the asset
just the source; never deploy such a synth, the functions would fail to import its deps.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import (
    BundlingOptions,
    DockerImage,
    Duration,
    IgnoreMode,
    ILocalBundling,
    RemovalPolicy,
)
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ("custos", "lambdas")
LAMBDA_PYTHON_VERSION = "3.12"
RUNTIME = lambda_.Runtime.PYTHON_3_12

# Everything under the repo root except the two packages the function imports.
ASSET_EXCLUDE = [
    "*",
    ".*",
    *(f"!{package}" for package in SOURCE_PACKAGES),
    *(f"!{package}/**" for package in SOURCE_PACKAGES),
    "**/__pycache__",
    "**/*.pyc",
]
_COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


class BundlingFailed(RuntimeError):
    """Installing the Lambda's dependencies failed; the message carries pip's output."""


@jsii.implements(ILocalBundling)
class LocalBundler:
    """Copies the source packages and pip-installs the runtime deps into the asset dir."""

    def __init__(self, source_root: Path = REPO_ROOT) -> None:
        self.source_root = source_root

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_options: Any) -> bool:
        output = Path(output_dir)
        for package in SOURCE_PACKAGES:
            shutil.copytree(
                self.source_root / package,
                output / package,
                ignore=_COPY_IGNORE,
                dirs_exist_ok=True,
            )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-compile",
                "--target",
                str(output),
                "--platform",
                "manylinux2014_x86_64",
                "--implementation",
                "cp",
                "--python-version",
                LAMBDA_PYTHON_VERSION,
                "--only-binary=:all:",
                "-r",
                str(self.source_root / "requirements.txt"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BundlingFailed(
                "pip could not install the Lambdas' dependencies from requirements.txt "
                f"(exit {result.returncode}); check PyPI is reachable, or set the context "
                "flag custos:skip_bundling=true for a synth that will not be deployed.\n"
                + result.stderr[-4000:]
            )
        # True tells the CDK the asset is built, so it never falls back to Docker.
        return True


def function_code(*, skip_bundling: bool) -> lambda_.Code:
    """The asset every Custos Lambda runs from (each names its handler module): bundled, or
    the bare source when ``skip_bundling``. One stack's functions can share one."""
    if skip_bundling:
        return lambda_.Code.from_asset(
            str(REPO_ROOT), exclude=ASSET_EXCLUDE, ignore_mode=IgnoreMode.GLOB
        )
    return lambda_.Code.from_asset(
        str(REPO_ROOT),
        exclude=ASSET_EXCLUDE,
        ignore_mode=IgnoreMode.GLOB,
        bundling=BundlingOptions(
            # Only named because the CDK requires an image; the local bundler always succeeds
            # or raises, so Docker is never run.
            image=RUNTIME.bundling_image,
            local=LocalBundler(),
        ),
    )


def logged_function(
    scope: Construct,
    construct_id: str,
    *,
    code: lambda_.Code,
    handler: str,
    environment: dict[str, str],
    timeout: Duration,
) -> lambda_.Function:
    """A function whose role may write its own log group and nothing else yet."""
    log_group = logs.LogGroup(
        scope,
        f"{construct_id}Logs",
        retention=logs.RetentionDays.ONE_YEAR,
        removal_policy=RemovalPolicy.RETAIN,
    )
    # An own role instead of AWSLambdaBasicExecutionRole, whose log rights span "*".
    role = iam.Role(
        scope, f"{construct_id}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com")
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[log_group.log_group_arn],
        )
    )
    return lambda_.Function(
        scope,
        construct_id,
        runtime=RUNTIME,
        handler=handler,
        code=code,
        role=role,
        memory_size=512,
        timeout=timeout,
        log_group=log_group,
        environment=environment,
    )
