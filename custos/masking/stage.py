"""Masking, the stage after policy: a statement policy allows with masks runs, and its
answers pass through a rewriter that masks the result columns the decision names
(custos/policy/masks.py, rewriter.py).

What it cannot mask yet it refuses, so nothing runs unmasked: COPY ... TO STDOUT of a
masked statement, and pseudonyms when no masking key is configured.
"""

from __future__ import annotations

import logging

from custos.masking.rewriter import MaskingRewriter
from custos.masking.values import Masker
from custos.policy.engine import Effect
from custos.policy.models import MaskMethod
from custos.protocol import sqlstates
from custos.session.refusal import Refusal
from custos.session.stages import FORWARD, Outcome, Plan, Refuse, Rewrite, Stage
from custos.session.statement import Statement
from custos.sql.facts import StatementFacts, StatementKind
from custos.sql.risks import FUNCTION_STATEMENTS, STATE_SETTING_FUNCTIONS

COPY_REFUSAL = Refusal(
    sqlstates.FEATURE_NOT_SUPPORTED,
    "this COPY reads personal data your role sees masked, and the gateway does not mask"
    " COPY data yet, so it refuses it",
    "read the rows with SELECT instead: its results are masked",
)
NO_KEY_REFUSAL = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "policy wants personal data in these results pseudonymised, and the gateway has no"
    " masking key configured, so it refuses the statement",
    "ask the gateway's operators to set masking.key_env, masking.key_file or masking.key_secret",
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


def _stores(facts: StatementFacts) -> bool:
    """Whether a statement does more than read: writes, sets, locks, notifies, or calls a
    function that keeps its argument (set_config, setseed...) or runs unseen code."""
    if facts.dynamic or not facts.kinds <= {StatementKind.SELECT}:
        return True
    return any(name.rpartition(".")[2] in _STORING_FUNCTIONS for name in facts.functions)


_PSEUDONYMS = frozenset({MaskMethod.PSEUDONYM, MaskMethod.HASH})


log = logging.getLogger(__name__)


class MaskingStage(Stage):
    # Each masked statement's counts are logged: which columns, by which method, how many
    # values (positions and categories only: an alias the client wrote could be anything).
    hears_outcomes = True

    def __init__(self, key: bytes | None) -> None:
        # Without a key, pseudonyms cannot be made; partial, redact and null need none.
        self._masker = Masker(key)
        self._keyed = key is not None

    def plan(self, statement: Statement) -> Plan:
        decision = statement.decision
        if decision is None or decision.effect is not Effect.MASK:
            return FORWARD
        for analysis, _ in statement.candidates:
            for facts in analysis.statements:
                if StatementKind.COPY_TO in facts.kinds or facts.copy_destination is not None:
                    return Refuse(COPY_REFUSAL)
                if _stores(facts):
                    return Refuse(STORING_REFUSAL)
        if not self._keyed and any(mask.method in _PSEUDONYMS for mask in decision.masks):
            return Refuse(NO_KEY_REFUSAL)
        return Rewrite(
            MaskingRewriter(decision.column_masks, decision.result_columns, self._masker)
        )

    def finished(self, statement: Statement, outcome: Outcome) -> None:
        if not outcome.masked:
            return
        log.info(
            "statement %d masked %d values: %s",
            statement.number,
            sum(column.values for column in outcome.masked),
            " ".join(
                f"{column.statement_index}.{column.position}:{column.category}:{column.method}"
                f"={column.values}" + (f"(null {column.nulled})" if column.nulled else "")
                for column in outcome.masked
            ),
        )
