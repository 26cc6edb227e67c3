"""Masking, the stage after policy: a statement policy allows with masks runs, and its
answers pass through a rewriter that masks the result columns the decision names
(custos/policy/masks.py, rewriter.py).

What it cannot mask it refuses, so nothing runs unmasked: a masked statement that also
writes or keeps values somewhere (a table, a setting, a lock, a notification), a COPY to
anywhere but the client or in options the masking cannot follow (copy_out.py), and
pseudonyms when no masking key is configured.
"""

from __future__ import annotations

from dataclasses import replace

import pglast
from pglast import ast

from custos.masking.copy_out import CopyFormat, UnsupportedCopy
from custos.masking.detect import compiled_patterns
from custos.masking.notifications import NotificationMasker
from custos.masking.rewriter import MASKABLE_ENCODINGS, MaskingRewriter
from custos.masking.values import Masker
from custos.policy.engine import Decision, Effect
from custos.policy.models import PSEUDONYM_METHODS
from custos.protocol import sqlstates
from custos.session.refusal import Refusal
from custos.session.stages import FORWARD, Plan, Refuse, Rewrite, Stage
from custos.session.statement import Statement
from custos.sql.facts import StatementFacts, StatementKind
from custos.sql.risks import FUNCTION_STATEMENTS, STATE_SETTING_FUNCTIONS

COPY_REFUSAL = Refusal(
    sqlstates.FEATURE_NOT_SUPPORTED,
    "this COPY reads personal data your role sees masked, and the gateway masks only what"
    " a COPY sends to the client ({reason}), so it refuses it",
    "COPY ... TO STDOUT in the text, csv or binary format, in UTF8, or read the rows with SELECT",
)
NO_KEY_REFUSAL = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "policy wants personal data in these results pseudonymised, and the gateway has no"
    " masking key configured, so it refuses the statement",
    "ask the gateway's operators to set masking.key_env, masking.key_file or masking.key_secret",
)


ENCODING_REFUSAL = Refusal(
    sqlstates.FEATURE_NOT_SUPPORTED,
    "this statement reads personal data your role sees masked, and the gateway masks"
    " results only in the UTF8 client encoding (this session's is {encoding})",
    "SET client_encoding TO 'UTF8', then run it again",
)

PIPELINED_REFUSAL = Refusal(
    sqlstates.FEATURE_NOT_SUPPORTED,
    "this statement reads personal data your role sees masked, and a statement sent before"
    " it since the last Sync may change the client encoding its results come in, which the"
    " gateway must know to mask them",
    "send a Sync (end the pipeline) before a statement whose results are masked",
)

HOLD_REFUSAL = Refusal(
    sqlstates.FEATURE_NOT_SUPPORTED,
    "this cursor reads personal data your role sees masked and is WITH HOLD: its query runs"
    " when the transaction commits, whose errors would quote the values unmasked, so the"
    " gateway refuses it",
    "declare the cursor without HOLD, inside a transaction, and FETCH from it there",
)

STORING_REFUSAL = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "this statement reads personal data your role sees masked and also writes or keeps"
    " values somewhere masking cannot follow (a table, a setting, a sequence, a lock, a"
    " notification), so the gateway refuses it",
    "read the data in a statement that only reads",
)

# Functions that keep a value in the session or send it elsewhere, where a later statement
# (or the protocol's ParameterStatus) would return it unmasked.
_STORING_FUNCTIONS = STATE_SETTING_FUNCTIONS | FUNCTION_STATEMENTS.keys() | {"set_config"}


_READING = frozenset({StatementKind.SELECT})
_COPYING_OUT = frozenset({StatementKind.SELECT, StatementKind.COPY_TO})


def _stores(facts: StatementFacts, reading: frozenset[StatementKind]) -> bool:
    """Whether a statement does more than read: writes, sets, locks, notifies, or calls a
    function that keeps its argument (set_config, setseed...) or runs unseen code."""
    if facts.dynamic or not facts.kinds <= reading:
        return True
    return any(name.rpartition(".")[2] in _STORING_FUNCTIONS for name in facts.functions)


def _copy_format(facts: StatementFacts, text: str) -> CopyFormat:
    """The format of a COPY that sends its rows to the client, read from its own text;
    UnsupportedCopy for any other COPY, or options the masking cannot follow."""
    if facts.copy_destination != "stdout":
        raise UnsupportedCopy("this COPY does not send its rows to the client")
    try:
        parsed = pglast.parse_sql(text)
    except pglast.parser.ParseError:
        raise UnsupportedCopy("its text does not parse as one COPY") from None
    copy = parsed[0].stmt if len(parsed) == 1 else None
    if not isinstance(copy, ast.CopyStmt) or copy.is_from or copy.filename is not None:
        raise UnsupportedCopy("this COPY does not send its rows to the client")
    return CopyFormat.of_statement(copy)


def _filled(refusal: Refusal, **values: str) -> Refusal:
    """The refusal with the values its message names filled in."""
    return replace(refusal, message=refusal.message.format(**values))


class MaskingStage(Stage):
    def __init__(self, key: bytes | None) -> None:
        # Without a key, pseudonyms cannot be made; partial, redact and null need none.
        self._masker = Masker(key)
        # Once the session LISTENs: the role's mask rules, which notifications' payloads
        # are masked by (notifications.py).
        self._notifications: NotificationMasker | None = None

    def plan(self, statement: Statement) -> Plan:
        decision = statement.decision
        if decision is not None and decision.notification_masks:
            self._notifications = NotificationMasker(
                decision.notification_masks, self._masker if self._masker.keyed else None
            )
        if decision is None or not _masked(decision):
            return FORWARD
        encoding = statement.client_encoding.upper()
        if not encoding:
            return Refuse(PIPELINED_REFUSAL)
        if encoding not in MASKABLE_ENCODINGS:
            # Another encoding's characters can hold the bytes of a quote, a backslash or a
            # delimiter: array, record, JSON and COPY text would be misread.
            return Refuse(_filled(ENCODING_REFUSAL, encoding=encoding))
        copy_formats: list[CopyFormat | None] = []
        for analysis, _ in statement.candidates:
            for index, facts in enumerate(analysis.statements):
                copy_format = None
                copies = StatementKind.COPY_TO in facts.kinds or facts.copy_destination is not None
                if _stores(facts, _COPYING_OUT if copies else _READING):
                    return Refuse(STORING_REFUSAL)
                if facts.holdable:
                    return Refuse(HOLD_REFUSAL)
                if copies:
                    try:
                        copy_format = _copy_format(facts, analysis.texts[index])
                    except UnsupportedCopy as unsupported:
                        return Refuse(_filled(COPY_REFUSAL, reason=str(unsupported)))
                if len(copy_formats) <= index:
                    copy_formats.append(copy_format)
        if not self._masker.keyed and any(
            mask.method in PSEUDONYM_METHODS for mask in decision.masks
        ):
            return Refuse(NO_KEY_REFUSAL)
        return Rewrite(
            MaskingRewriter(
                decision.column_masks,
                decision.result_columns,
                self._masker,
                copy_formats,
                compiled_patterns(decision.patterns),
            )
        )

    def notification(self, body: bytes) -> bytes | None:
        notifications = self._notifications
        return None if notifications is None else notifications.masked(body)


def _masked(decision: Decision) -> bool:
    """Whether results are masked: a mask decision's, and an approved statement's whose
    role has mask rules that fired (an approval lets it run; it does not lift masking)."""
    effect = decision.effect
    return effect is Effect.MASK or (effect is Effect.REQUIRE_APPROVAL and bool(decision.masks))
