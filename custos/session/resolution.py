"""What EXECUTE, FETCH and MOVE run: the statement or portal they name, as the session has it.

`EXECUTE s` runs the statement prepared as s (by PREPARE or by a protocol Parse); `FETCH c`
and `MOVE c` run the portal c (a cursor DECLAREd in SQL, or a portal Bound through the
protocol). Each is decided on the SQL it runs, so the request's analysis takes that SQL's
facts in place of the EXECUTE or FETCH. Earlier statements of the same string count:
`PREPARE s AS ...; EXECUTE s`.
"""

from __future__ import annotations

from custos.protocol import sqlstates
from custos.session.refusal import Refusal
from custos.session.statement import Candidates, Portal, Prepared
from custos.session.view import UNCONFIRMED, Namespace, SessionView, Unconfirmed, single, sql_name
from custos.sql.facts import Analysis, StatementFacts


def resolve(
    candidates: Candidates, view: SessionView, depth: int = 0
) -> Candidates | Refusal | Unconfirmed:
    """The candidates with each EXECUTE, FETCH or MOVE replaced by what it runs, and what
    that runs in turn (`EXECUTE f` where f is `FETCH ALL FROM p` runs p's statement).

    UNCONFIRMED: a name it runs was touched by messages the database has not answered yet.
    """
    if not runs_another(candidates):
        return candidates
    if depth >= _MAX_DEPTH:
        return _TOO_DEEP
    resolved: list[tuple[Analysis, tuple[str, ...]]] = []
    for analysis, path in candidates:
        # One statement in, one out: the database completes each statement of the string
        # once, and the session matches its answers to them by position. What EXECUTE or
        # FETCH runs is one statement, or none (an empty one: then its own facts stay). A
        # name analysed under several search-path candidates gives one variant each.
        variants: list[tuple[list[StatementFacts], list[str]]] = [([], [])]
        statements: dict[bytes, Candidates | None] = {}
        cursors: dict[bytes, Candidates | None] = {}
        for position, statement in enumerate(analysis.statements):
            text = analysis.texts[position] if position < len(analysis.texts) else ""
            if statement.prepares is not None:
                statements[sql_name(statement.prepares)] = single(analysis, position, path)
            if statement.deallocates is not None:
                _forget(statements, statement.deallocates)
            if statement.declares is not None:
                cursors[sql_name(statement.declares)] = single(analysis, position, path)
            if statement.closes is not None:
                _forget(cursors, statement.closes)
            found: Candidates | Refusal | Unconfirmed
            if statement.executes is not None:
                found = _runs(statement.executes, statements, view.statements, view, "statement")
            elif statement.fetches is not None:
                found = _runs(statement.fetches, cursors, view.portals, view, "cursor")
            else:
                found = ((Analysis((statement,), (text,)), path),)
            if isinstance(found, tuple):
                found = resolve(found, view, depth + 1)
            if not isinstance(found, tuple):
                return found
            options: dict[int, tuple[StatementFacts, str]] = {}
            for candidate, _ in found:
                ran = _texts(candidate)
                if len(ran) > 1:
                    return _MANY
                option = ran[0] if ran else (statement, text)
                options[id(option[0])] = option
            variants = [
                ([*facts, fact], [*texts, ran_text])
                for facts, texts in variants
                for fact, ran_text in options.values()
            ]
            if len(variants) > _MAX_VARIANTS:
                return _TOO_MANY
        # New analyses, not shared ones: they must not be decided as their canonical.
        resolved.extend((Analysis(tuple(facts), tuple(texts)), path) for facts, texts in variants)
    return tuple(resolved)


def runs_another(candidates: Candidates) -> bool:
    """Whether the statement is an EXECUTE, FETCH or MOVE: it runs another statement."""
    if not candidates:
        return False
    first = candidates[0][0]
    return bool(first.session_effects) and any(
        s.executes is not None or s.fetches is not None for s in first.statements
    )


_MAX_DEPTH = 8
_TOO_DEEP = Refusal(
    sqlstates.PROGRAM_LIMIT_EXCEEDED,
    "the statement runs a prepared statement or cursor that runs another, too many levels"
    " deep for the gateway to follow; run the innermost statement directly",
)
_MANY = Refusal(
    sqlstates.FEATURE_NOT_SUPPORTED,
    "the gateway cannot follow a prepared statement or cursor that holds several statements",
)
_MAX_VARIANTS = 64
_TOO_MANY = Refusal(
    sqlstates.PROGRAM_LIMIT_EXCEEDED,
    "the query string runs too many prepared statements or cursors, each of several readings"
    " under the search path, for the gateway to decide; send them one at a time or qualify"
    " the names in them",
)


def _texts(analysis: Analysis) -> list[tuple[StatementFacts, str]]:
    texts = list(analysis.texts) + [""] * (len(analysis.statements) - len(analysis.texts))
    return list(zip(analysis.statements, texts, strict=False))


def _runs(
    name: str,
    earlier: dict[bytes, Candidates | None],
    namespace: Namespace[Prepared] | Namespace[Portal],
    view: SessionView,
    what: str,
) -> Candidates | Refusal | Unconfirmed:
    """What EXECUTE or FETCH `name` runs: prepared or declared earlier in the string, or as
    the session has it."""
    key = sql_name(name)
    found: Candidates | None
    if key in earlier:
        found = earlier[key]
    else:
        held = namespace.lookup(key, view.segment, view.confirmed_segments)
        if isinstance(held, Unconfirmed):
            return UNCONFIRMED
        prepared = held.prepared if isinstance(held, Portal) else held
        if isinstance(prepared, Prepared) and prepared.refusal is not None:
            return prepared.refusal
        found = prepared.candidates if isinstance(prepared, Prepared) else None
    if found is not None:
        return found
    shown = key.decode("utf-8", errors="replace")
    if what == "statement":
        return Refusal(
            sqlstates.INVALID_SQL_STATEMENT_NAME, f'prepared statement "{shown}" does not exist'
        )
    return Refusal(sqlstates.INVALID_CURSOR_NAME, f'cursor "{shown}" does not exist')


def _forget(earlier: dict[bytes, Candidates | None], name: str) -> None:
    if name == "*":
        for key in earlier:
            earlier[key] = None
    else:
        earlier[sql_name(name)] = None
