"""What the policy evaluation Lambda accepts and answers.

The answer's shape is the proxy's: ``custos.policy.lambda_point.DecisionPayload`` is what
the decision point validates, so both sides read one definition.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from custos.policy.lambda_point import MAX_PARAMETERS, MAX_SQL_BYTES, DecisionPayload

MAX_REACHED_FUNCTIONS = 10_000

__all__ = [
    "PolicyEvaluationError",
    "PolicyEvaluationRequest",
    "PolicyEvaluationResponse",
    "Principal",
    "SessionState",
]


def _sql_size(value: str) -> str:
    size = len(value.encode())
    if size > MAX_SQL_BYTES:
        raise ValueError(
            f"the SQL text is {size} bytes; at most {MAX_SQL_BYTES} (1 MiB) is accepted"
        )
    return value


class _Edge(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Principal(_Edge):
    """Who sent the statement, as the proxy verified it from their token."""

    subject: str
    issuer: str
    groups: list[str] = Field(default_factory=list)
    claims: dict[str, Any] = Field(default_factory=dict)


class SessionState(_Edge):
    # Unqualified names resolve against this path, as PostgreSQL would.
    search_path: list[str] = Field(default_factory=lambda: ["public"])


class Reached(_Edge):
    """What one statement calls or reaches, as the gateway read it from the database's
    catalog (views, defaults, checks, triggers run functions the text does not name)."""

    functions: list[str] = Field(default_factory=list, max_length=MAX_REACHED_FUNCTIONS)
    unknown: bool = False  # it reaches something the gateway could not analyse


class PolicyEvaluationRequest(_Edge):
    """One query string to decide: several statements are decided together."""

    principal: Principal | None = None
    role: str = Field(min_length=1, max_length=63)  # PostgreSQL names are at most 63 bytes
    sql: Annotated[str, AfterValidator(_sql_size)]
    # Bind parameter values in text form ($1 is params[0]); None: NULL, binary or unknown.
    params: list[str | None] = Field(default_factory=list, max_length=MAX_PARAMETERS)
    session: SessionState = Field(default_factory=SessionState)
    # One per statement of `sql`, in order; empty when the sender reads no catalog.
    reached: list[Reached] = Field(default_factory=list, max_length=MAX_PARAMETERS)


class PolicyEvaluationResponse(DecisionPayload):
    """The decision: ``Decision.as_dict()`` of the engine's answer."""


class PolicyEvaluationError(_Edge):
    """The answer to a request that could not be evaluated: what was wrong with it."""

    error: str
