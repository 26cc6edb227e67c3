"""Policy: the document, the engine that decides each statement, and where policies come from."""

from custos.policy.engine import (
    ApprovalRequirement,
    Decision,
    DecisionFacts,
    DecisionRequest,
    MaskSpec,
    PolicyEngine,
)
from custos.policy.models import Effect, MaskMethod, PolicyDocument
from custos.policy.source import (
    FilePolicySource,
    PolicyError,
    PolicySource,
    S3PolicySource,
    load_policy,
)
from custos.policy.version import policy_version

__all__ = [
    "ApprovalRequirement",
    "Decision",
    "DecisionFacts",
    "DecisionRequest",
    "Effect",
    "FilePolicySource",
    "MaskMethod",
    "MaskSpec",
    "PolicyDocument",
    "PolicyEngine",
    "PolicyError",
    "PolicySource",
    "S3PolicySource",
    "load_policy",
    "policy_version",
]
