#!/usr/bin/env python3
"""The Custos CDK app: `cdk synth` / `cdk deploy` (configuration: cdk.json context `custos`)."""

from stacks.app_builder import build_app

build_app().synth()
