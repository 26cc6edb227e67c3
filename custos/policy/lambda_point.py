"""The policy evaluation Lambda as the proxy's decision point: cached, and closed when it fails.

A statement seen before (same role, SQL, search path and parameters) is decided from an LRU
cache, synchronously, so the hot path never waits on the network. A miss returns a coroutine
that invokes the Lambda; identical misses in flight share one invocation. The cache is
emptied when an answer names another policy version than the cached answers, and entries
expire after ``cache_seconds`` so a policy change reaches statements that only ever hit.

Anything but a well-formed decision (timeout, throttling, a function error, a malformed
payload) denies the statement and is not cached: the gateway never lets a statement through
because it could not ask.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from custos.policy.engine import (
    ApprovalRequirement,
    Decision,
    DecisionFacts,
    DecisionRequest,
    MaskSpec,
    PolicyEngine,
)
from custos.policy.masks import ColumnMask, JsonMask, KeyMask
from custos.policy.models import ApprovalMode, Effect, MaskMethod, PolicyDocument
from custos.policy.patterns import PolicyPattern, checked_pattern
from custos.sql.facts import Analysis

__all__ = [
    "MAX_PARAMETERS",
    "MAX_SQL_BYTES",
    "TOO_LARGE_MESSAGE",
    "UNAVAILABLE_VERSION",
    "UNREACHABLE_MESSAGE",
    "DecisionPayload",
    "LambdaDecisionPoint",
]

logger = logging.getLogger("custos.policy")

MAX_SQL_BYTES = 1 << 20
"""The most SQL (UTF-8 bytes) one evaluation request may carry."""
MAX_PARAMETERS = 65535
"""The most bind parameters one request may carry: PostgreSQL's own limit."""
# Lambda refuses a synchronous request payload above 6 MB; a request that large is refused
# here with a message that says so, rather than as an unreachable decision point.
_MAX_PAYLOAD_BYTES = 6 * 1000 * 1000
# Decisions for bigger statements are not cached: the key holds the SQL and parameters, and
# 10,000 entries of this size bound the cache to a few hundred MB at the very worst.
_MAX_CACHED_KEY_CHARS = 16 * 1024

UNREACHABLE_MESSAGE = (
    "the policy decision point is unreachable, so the gateway refuses the statement; "
    "try again shortly"
)
TOO_LARGE_MESSAGE = (
    f"the statement is too large for the policy decision point (at most {MAX_SQL_BYTES} bytes "
    f"of SQL and {MAX_PARAMETERS} parameters, 6 MB in all), so the gateway refuses it; "
    "send it in smaller parts"
)
UNAVAILABLE_VERSION = "unavailable"
"""The policy version of a decision no policy made (the decision point could not be asked)."""

# An unparsable statement is denied before any rule is read, so an engine over an empty
# policy gives exactly the engine's own message; only its version is replaced.
_NO_POLICY = PolicyEngine(PolicyDocument())

# role, SQL, search path, parameters, and per statement the functions it calls or reaches
# and whether it reaches something the gateway could not analyse (see sql/reached.py).
_Key = tuple[
    str, str, tuple[str, ...], tuple[str | None, ...], tuple[tuple[tuple[str, ...], bool], ...]
]


# --- the decision as the Lambda returns it -------------------------------------------------


class _Wire(BaseModel):
    # Fail closed on a payload this proxy does not fully understand.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApprovalPayload(_Wire):
    rule: str
    group: str
    approvals: int = Field(ge=1)
    grant_for_seconds: int | None
    mode: ApprovalMode
    expires_seconds: int = Field(ge=1)
    estimate_rows: bool


class MaskPayload(_Wire):
    rule: str
    categories: list[str] = Field(min_length=1)
    method: MaskMethod


class KeyMaskPayload(_Wire):
    key: str
    category: str
    method: MaskMethod
    computed: bool = False


class JsonMaskPayload(_Wire):
    masked: list[KeyMaskPayload]
    keys: list[str]
    exact: bool
    aggregated: bool

    def to_mask(self) -> JsonMask:
        return JsonMask(
            tuple(KeyMask(key.key, key.category, key.method, key.computed) for key in self.masked),
            tuple(self.keys),
            self.exact,
            self.aggregated,
        )


class ColumnMaskPayload(_Wire):
    position: int = Field(ge=0)
    name: str | None
    category: str
    method: MaskMethod
    rule: str
    json_mask: JsonMaskPayload | None = Field(default=None, alias="json")
    computed: bool = False

    def to_mask(self) -> ColumnMask:
        shape = None if self.json_mask is None else self.json_mask.to_mask()
        return ColumnMask(
            self.position,
            self.name,
            self.category,
            self.method,
            self.rule,
            shape,
            self.computed,
        )


class PatternPayload(_Wire):
    category: str
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _checked(cls, value: str) -> str:
        # The proxy runs it over result text: held to the rules a policy's are held to.
        checked_pattern(value)
        return value


def _mask_specs(masks: list[MaskPayload]) -> tuple[MaskSpec, ...]:
    return tuple(MaskSpec(mask.rule, frozenset(mask.categories), mask.method) for mask in masks)


class FactsPayload(_Wire):
    statements: int = Field(ge=0)
    kinds: list[str]
    relations_read: list[str]
    relations_written: list[str]
    categories_read: list[str]
    categories_written: list[str]
    functions: list[str]
    risks: list[str]
    unparsable: bool


class DecisionPayload(_Wire):
    """``Decision.as_dict()`` as it crosses the wire: what the policy Lambda answers."""

    effect: Effect
    rules: list[str]
    deciding_rule: str | None
    message: str
    policy_version: str = Field(min_length=1)
    approval: ApprovalPayload | None
    masks: list[MaskPayload]
    facts: FactsPayload
    column_masks: list[list[ColumnMaskPayload]] = Field(default_factory=list)
    result_columns: list[list[str | None]] = Field(default_factory=list)
    patterns: list[PatternPayload] = Field(default_factory=list)
    notification_masks: list[MaskPayload] = Field(default_factory=list)

    @model_validator(mode="after")
    def _complete(self) -> DecisionPayload:
        if self.effect is Effect.REQUIRE_APPROVAL and self.approval is None:
            raise ValueError("a require_approval decision names no approval")
        if self.effect is Effect.MASK and not self.masks:
            raise ValueError("a mask decision names no masks")
        return self

    def to_decision(self) -> Decision:
        approval = self.approval
        facts = self.facts
        return Decision(
            effect=self.effect,
            rules=tuple(self.rules),
            deciding_rule=self.deciding_rule,
            message=self.message,
            policy_version=self.policy_version,
            approval=ApprovalRequirement(
                rule=approval.rule,
                group=approval.group,
                approvals=approval.approvals,
                grant_for_seconds=approval.grant_for_seconds,
                mode=approval.mode.value,
                expires_seconds=approval.expires_seconds,
                estimate_rows=approval.estimate_rows,
            )
            if approval is not None
            else None,
            masks=_mask_specs(self.masks),
            notification_masks=_mask_specs(self.notification_masks),
            facts=DecisionFacts(
                statements=facts.statements,
                kinds=tuple(facts.kinds),
                relations_read=tuple(facts.relations_read),
                relations_written=tuple(facts.relations_written),
                categories_read=tuple(facts.categories_read),
                categories_written=tuple(facts.categories_written),
                functions=tuple(facts.functions),
                risks=tuple(facts.risks),
                unparsable=facts.unparsable,
            ),
            column_masks=tuple(
                tuple(mask.to_mask() for mask in statement) for statement in self.column_masks
            ),
            result_columns=tuple(tuple(names) for names in self.result_columns),
            patterns=tuple(
                PolicyPattern(pattern.category, pattern.pattern) for pattern in self.patterns
            ),
        )


# --- the decision point ---------------------------------------------------------------------


class LambdaDecisionPoint:
    """Decides statements by invoking the policy evaluation Lambda ``function_name``.

    ``client_factory`` builds the Lambda client (default: boto3's, with the timeout and at
    most one retry); ``clock`` (monotonic seconds) ages cache entries.
    """

    reads_statement_text = True  # the Lambda analyses the text it is sent

    def __init__(
        self,
        function_name: str,
        *,
        client_factory: Callable[[], Any] | None = None,
        cache_entries: int = 10_000,
        timeout_seconds: float = 2.0,
        cache_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.function_name = function_name
        self._client_factory = client_factory or self._default_client
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._cache_entries = cache_entries
        self._timeout = timeout_seconds
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: OrderedDict[_Key, tuple[Decision, float]] = OrderedDict()
        self._version: str | None = None  # the policy version every cached decision names
        self._in_flight: dict[_Key, asyncio.Future[Decision]] = {}

    def decide(
        self,
        role: str,
        analysis: Analysis,
        parameters: tuple[str | None, ...],
        search_path: tuple[str, ...],
    ) -> Decision | Awaitable[Decision]:
        if analysis.error is not None:
            decision = _NO_POLICY.decide(DecisionRequest(role, analysis, parameters))
            return dataclasses.replace(
                decision, policy_version=self._version or UNAVAILABLE_VERSION
            )
        sql = ";\n".join(analysis.texts)
        # The Lambda analyses the text itself; what the statements reach through the
        # catalog (views, defaults, triggers) only the gateway knows, so it is sent along.
        functions = tuple(
            (tuple(sorted(statement.functions)), statement.dynamic)
            for statement in analysis.statements
        )
        key = (role, sql, search_path, parameters, functions)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return self._decide_remotely(key, analysis)

    # --- the cache --------------------------------------------------------------------------

    def _cached(self, key: _Key) -> Decision | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        decision, stored_at = entry
        if self._clock() - stored_at > self._cache_seconds:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return decision

    def _store(self, key: _Key, decision: Decision) -> None:
        if decision.policy_version != self._version:
            # The Lambda now decides under another policy: every cached answer may be stale.
            self._cache.clear()
            self._version = decision.policy_version
        if len(key[1]) + sum(len(value or "") for value in key[3]) > _MAX_CACHED_KEY_CHARS:
            return
        self._cache[key] = (decision, self._clock())
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    # --- the invocation ---------------------------------------------------------------------

    async def _decide_remotely(self, key: _Key, analysis: Analysis) -> Decision:
        cached = self._cached(key)
        if cached is not None:
            return cached
        pending = self._in_flight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._invoke(key, analysis))
            self._in_flight[key] = pending
            pending.add_done_callback(lambda done: self._forget(key, done))
        # One waiter's cancellation (a client's cancel request) must not cancel the others'.
        return await asyncio.shield(pending)

    def _forget(self, key: _Key, done: asyncio.Future[Decision]) -> None:
        if self._in_flight.get(key) is done:
            del self._in_flight[key]

    async def _invoke(self, key: _Key, analysis: Analysis) -> Decision:
        role, sql, search_path, parameters, functions = key
        if len(sql.encode()) > MAX_SQL_BYTES or len(parameters) > MAX_PARAMETERS:
            return _local_deny(analysis, TOO_LARGE_MESSAGE)
        # principal: the proxy decides by role; the request has room for one when policy
        # needs it.
        request = {
            "principal": None,
            "role": role,
            "sql": sql,
            "params": list(parameters),
            "session": {"search_path": list(search_path)},
            "reached": [
                {"functions": list(called), "unknown": dynamic} for called, dynamic in functions
            ],
        }
        payload = json.dumps(request, separators=(",", ":")).encode()
        if len(payload) > _MAX_PAYLOAD_BYTES:
            return _local_deny(analysis, TOO_LARGE_MESSAGE)
        try:
            answer = await asyncio.wait_for(asyncio.to_thread(self._call, payload), self._timeout)
            decision = _decision_from(answer)
        except Exception as error:
            # Never the SQL or its parameters: the reason alone.
            logger.error(
                "policy decision point %s failed, statement refused: %s",
                self.function_name,
                self._describe(error),
            )
            return _local_deny(analysis, UNREACHABLE_MESSAGE)
        self._store(key, decision)
        return decision

    def _call(self, payload: bytes) -> bytes:
        response = self._client_once().invoke(FunctionName=self.function_name, Payload=payload)
        function_error = response.get("FunctionError")
        if function_error:
            # The error payload's message may quote the request; only its kind is named.
            raise _Unusable(f"the function failed ({function_error})")
        status = response.get("StatusCode")
        if status != 200:
            raise _Unusable(f"the invocation returned status {status}")
        body: bytes = response["Payload"].read()
        return body

    def _client_once(self) -> Any:
        # Built on first use, in a worker thread: boto3's default session is not thread-safe.
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def _default_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
            retries={"mode": "standard", "max_attempts": 1},
        )
        return boto3.client("lambda", config=config)

    def _describe(self, error: Exception) -> str:
        if isinstance(error, TimeoutError):
            return f"no answer within {self._timeout:g} s"
        if isinstance(error, ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'payload'}: {item['msg']}"
                for item in error.errors(include_input=False, include_url=False)
            )
            return f"the answer is not a decision ({problems})"
        if isinstance(error, _Unusable):
            return str(error)
        return f"{type(error).__name__}: {error}"


class _Unusable(Exception):
    """The Lambda answered, but not with a decision."""


def _decision_from(answer: bytes) -> Decision:
    try:
        data = json.loads(answer)
    except ValueError:
        raise _Unusable("the answer is not JSON") from None
    if isinstance(data, dict) and set(data) == {"error"}:
        # The Lambda's own refusal of a request: its message names fields, never values.
        raise _Unusable(f"the function refused the request: {data['error']}")
    return DecisionPayload.model_validate(data).to_decision()


def _local_deny(analysis: Analysis, message: str) -> Decision:
    """A deny no policy made; its facts are those the analysis alone knows."""
    statements = analysis.statements
    return Decision(
        effect=Effect.DENY,
        rules=(),
        deciding_rule=None,
        message=message,
        policy_version=UNAVAILABLE_VERSION,
        approval=None,
        masks=(),
        facts=DecisionFacts(
            statements=len(statements),
            kinds=tuple(sorted({kind for s in statements for kind in (s.kind, *s.kinds)})),
            relations_read=tuple(sorted({r for s in statements for r in s.relations_read})),
            relations_written=tuple(sorted({r for s in statements for r in s.relations_written})),
            functions=tuple(sorted({f for s in statements for f in s.functions})),
        ),
    )
