"""The policy evaluation Lambda: analyse one query, decide it under the policy, return why.

The policy is read at the first invocation, never at import: from the versioned S3 object
``CUSTOS_POLICY_BUCKET``/``CUSTOS_POLICY_KEY``, or from ``CUSTOS_POLICY_FILE`` bundled with
the function. A warm function checks for a new version at most every 30 seconds.

The event carries SQL text and bind values, which can hold personal data: neither is ever
logged. The log line of a decision names the role, effect, rules, policy version, and the
statement kinds and relations.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import ValidationError, parse
from aws_lambda_powertools.utilities.typing import LambdaContext

from custos.policy.engine import DecisionRequest, PolicyEngine
from custos.policy.source import FilePolicySource, S3PolicySource
from custos.sql.analysis import analyze
from custos.sql.facts import Analysis
from custos.sql.reached import calling
from lambdas.policy_eval.models import PolicyEvaluationError, PolicyEvaluationRequest

logger = Logger(service="custos-policy")
metrics = Metrics(namespace="Custos")

BUCKET_ENV = "CUSTOS_POLICY_BUCKET"
KEY_ENV = "CUSTOS_POLICY_KEY"
FILE_ENV = "CUSTOS_POLICY_FILE"


class PolicyNotConfigured(RuntimeError):
    """The function's environment names no policy, or names it ambiguously."""


class PolicyInForce:
    """The policy source the environment names, built at first use, re-checked at most
    every ``poll_seconds`` of ``clock``."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, poll_seconds: float = 30.0
    ) -> None:
        self.clock = clock
        self.poll_seconds = poll_seconds
        self._source: S3PolicySource | FilePolicySource | None = None
        self._checked_at = 0.0

    def engine(self) -> PolicyEngine:
        if self._source is None:
            self._source = _source_from_environment()
            self._checked_at = self.clock()
        elif self.clock() - self._checked_at >= self.poll_seconds:
            self._checked_at = self.clock()
            # A broken or unreadable new version is logged by the source; the last good
            # policy stays in force.
            self._source.check()
        return self._source.current()


def _source_from_environment() -> S3PolicySource | FilePolicySource:
    bucket = os.environ.get(BUCKET_ENV, "")
    key = os.environ.get(KEY_ENV, "")
    path = os.environ.get(FILE_ENV, "")
    if (bucket or key) and path:
        raise PolicyNotConfigured(
            f"both {BUCKET_ENV}/{KEY_ENV} and {FILE_ENV} are set; "
            "set only one of them to say where the policy is"
        )
    if bucket and key:
        # The source's own poll interval is for its watch task; the Lambda polls here.
        return S3PolicySource(bucket, key)
    if bucket or key:
        missing = KEY_ENV if bucket else BUCKET_ENV
        raise PolicyNotConfigured(
            f"{missing} is not set; set both {BUCKET_ENV} and {KEY_ENV} to read the policy from S3"
        )
    if path:
        return FilePolicySource(path)
    raise PolicyNotConfigured(
        f"no policy is configured: set {BUCKET_ENV} and {KEY_ENV} (a versioned S3 object) "
        f"or {FILE_ENV} (a file bundled with the function)"
    )


policy = PolicyInForce()


@metrics.log_metrics
@logger.inject_lambda_context(log_event=False)  # explicit: the env var must not turn it on
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = parse(event=event, model=PolicyEvaluationRequest)
    except ValidationError as error:
        problems = _problems(error)
        logger.warning("invalid policy evaluation request", extra={"problems": problems})
        metrics.add_metric(name="InvalidRequests", unit=MetricUnit.Count, value=1)
        return PolicyEvaluationError(
            error=f"invalid policy evaluation request: {'; '.join(problems)}"
        ).model_dump()
    engine = policy.engine()
    analysis = with_reached(analyze(request.sql, tuple(request.session.search_path)), request)
    decision = engine.decide(
        DecisionRequest(role=request.role, analysis=analysis, params=tuple(request.params))
    )
    facts = decision.facts
    logger.info(
        "policy decision",
        extra={
            "role": request.role,
            "effect": decision.effect.value,
            "rules": list(decision.rules),
            "deciding_rule": decision.deciding_rule,
            "policy_version": decision.policy_version,
            "statements": facts.statements,
            "kinds": list(facts.kinds),
            "relations_read": list(facts.relations_read),
            "relations_written": list(facts.relations_written),
            "unparsable": facts.unparsable,
        },
    )
    metrics.add_dimension(name="effect", value=decision.effect.value)
    metrics.add_metric(name="Decisions", unit=MetricUnit.Count, value=1)
    return decision.as_dict()


def _problems(error: ValidationError) -> list[str]:
    """Each problem as `where: what`, without the offending value (it may be the SQL)."""
    problems = []
    for item in error.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            what = "unknown field; the request has principal, role, sql, params and session"
        else:
            what = item["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {what}" if where else what)
    return problems


def with_reached(analysis: Analysis, request: PolicyEvaluationRequest) -> Analysis:
    """The analysis with what the gateway says each statement reaches through the catalog.

    A list that does not match the statements is read as reaching something unknown: the
    statements count as dynamic, which policy refuses unless a rule allows it.
    """
    reached = request.reached
    if not reached or analysis.error is not None:
        return analysis
    if len(reached) != len(analysis.statements):
        unknown = [calling(statement, frozenset(), True) for statement in analysis.statements]
        return dataclasses.replace(analysis, statements=tuple(unknown), canonical=None)
    statements = tuple(
        calling(statement, frozenset(sent.functions), sent.unknown)
        for statement, sent in zip(analysis.statements, reached, strict=True)
    )
    return dataclasses.replace(analysis, statements=statements, canonical=None)
