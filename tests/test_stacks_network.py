"""The network stack: two pinned zones, NAT egress for private subnets, endpoints, flow logs."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match, Template
from cdk_fixtures import TEST_CONTEXT, CdkSynth

ZONES = TEST_CONTEXT["availability_zones"]


@pytest.fixture(scope="module")
def network(cdk_synth: CdkSynth) -> Template:
    return cdk_synth.templates["Custos-Network"]


def _subnets(network: Template, subnet_type: str) -> list[dict[str, object]]:
    found = network.find_resources(
        "AWS::EC2::Subnet",
        {
            "Properties": {
                "Tags": Match.array_with([{"Key": "aws-cdk:subnet-type", "Value": subnet_type}])
            }
        },
    )
    return [resource["Properties"] for resource in found.values()]


def test_vpc_spans_exactly_the_pinned_zones(network: Template) -> None:
    network.resource_count_is("AWS::EC2::VPC", 1)
    for subnet_type in ("Public", "Private"):
        subnets = _subnets(network, subnet_type)
        assert sorted(subnet["AvailabilityZone"] for subnet in subnets) == ZONES


def test_private_subnets_assign_no_public_ips_and_route_through_nat(network: Template) -> None:
    assert all(subnet["MapPublicIpOnLaunch"] is False for subnet in _subnets(network, "Private"))
    network.resource_count_is("AWS::EC2::NatGateway", 2)
    network.resource_count_is(
        "AWS::EC2::Route",
        4,  # each zone: public -> internet gateway, private -> that zone's NAT
    )
    assert (
        len(
            network.find_resources(
                "AWS::EC2::Route", {"Properties": {"NatGatewayId": Match.any_value()}}
            )
        )
        == 2
    )


def test_gateway_endpoints_for_s3_and_dynamodb(network: Template) -> None:
    for service in ("s3", "dynamodb"):
        network.has_resource_properties(
            "AWS::EC2::VPCEndpoint",
            {
                "VpcEndpointType": "Gateway",
                "ServiceName": {
                    "Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, f".{service}"]]
                },
            },
        )


@pytest.mark.parametrize(
    "service", ["secretsmanager", "kms", "ecr.api", "ecr.dkr", "logs", "lambda", "sts"]
)
def test_interface_endpoint_in_private_subnets(network: Template, service: str) -> None:
    region = TEST_CONTEXT["region"]
    network.has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {
            "VpcEndpointType": "Interface",
            "ServiceName": f"com.amazonaws.{region}.{service}",
            "PrivateDnsEnabled": True,
            "SubnetIds": Match.array_with([{"Ref": Match.string_like_regexp("^VpcPrivateSubnet")}]),
        },
    )


def test_endpoints_accept_only_https_from_the_vpc(network: Template) -> None:
    network.has_resource_properties(
        "AWS::EC2::SecurityGroup",
        {
            "GroupDescription": Match.string_like_regexp("interface endpoints"),
            "SecurityGroupIngress": [
                {
                    "CidrIp": "10.0.0.0/16",
                    "FromPort": 443,
                    "ToPort": 443,
                    "IpProtocol": "tcp",
                    "Description": Match.any_value(),
                }
            ],
        },
    )
    network.has_resource_properties("AWS::EC2::VPC", {"CidrBlock": "10.0.0.0/16"})


def test_flow_logs_capture_all_traffic_with_retention(network: Template) -> None:
    network.has_resource_properties(
        "AWS::EC2::FlowLog",
        {"ResourceType": "VPC", "TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs"},
    )
    network.has_resource(
        "AWS::Logs::LogGroup",
        {"Properties": {"RetentionInDays": 365}, "DeletionPolicy": "Retain"},
    )


def test_default_security_group_is_restricted(network: Template) -> None:
    network.resource_count_is("Custom::VpcRestrictDefaultSG", 1)
