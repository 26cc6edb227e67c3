"""The functions a statement reaches through its relations, added to its facts.

The catalog says which functions reading or writing a relation runs (a view's definition,
row-level security, defaults, checks, domains, triggers: custos/upstream/reach.py). They
count as called by the statement: function rules match them, and a function that does
what a statement does (pg_notify, the advisory locks, lo_import...) or runs SQL given as
text makes the statement that kind, or dynamic, as a call written in the text would.

Pure: no IO. Unlike `*` expansion, this changes decisions, so the result is an analysis
of its own (no `canonical`): decisions remembered for the text alone do not apply to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from custos.sql import exposure
from custos.sql.collector import KIND_PRIORITY
from custos.sql.facts import Analysis, PatternMatch, StatementFacts, StatementKind
from custos.sql.names import qualified, resolution_schema
from custos.sql.risks import FUNCTION_STATEMENTS, SQL_TEXT_FUNCTIONS


@dataclass(frozen=True, slots=True)
class Reach:
    """The functions reading a relation runs, and those writing it runs besides."""

    read: frozenset[str] = frozenset()
    write: frozenset[str] = frozenset()
    # Something it runs could not be analysed: the statement counts as dynamic.
    unknown: bool = False
    # For a function: it returns a set of rows (see StatementFacts.calls_with_columns).
    returns_set: bool = False
    # For a function: the relations its body reads, and their columns (relation, column);
    # a name its body leaves unqualified is in the CALLER schema, resolved by the caller's
    # search path (with_function_bodies).
    relations: frozenset[str] = frozenset()
    columns: frozenset[tuple[str, str]] = frozenset()


CALLER = "$caller"
"""The schema a function body's unqualified relation names are put in when the function
does not set its own search path: the database resolves them by the caller's."""


NOTHING_REACHED = Reach()

UNDEFINED = Reach()
"""What a function, operator or type name reaches when nothing has that name: nothing, for
now. One may be created in the database at any moment, so this holds only for the statement
whose own catalog read found it (custos/upstream/columns.py, ColumnCatalog.behind)."""


def with_reached_functions(
    analysis: Analysis,
    reach: Mapping[str, Reach],
    operators: Mapping[str, Reach] | None = None,
    cast_types: Mapping[str, Reach] | None = None,
) -> Analysis:
    """The analysis with what its relations reach, and what the user-defined operators it
    uses and types it casts to run; the analysis itself when that is nothing it does not
    call already."""
    if not reach and not operators and not cast_types:
        return analysis
    statements = tuple(
        _with_reached(statement, reach, operators or {}, cast_types or {})
        for statement in analysis.statements
    )
    if all(new is old for new, old in zip(statements, analysis.statements, strict=True)):
        return analysis
    return dataclasses.replace(analysis, statements=statements, canonical=None)


def with_function_bodies(
    analysis: Analysis, bodies: Mapping[str, Reach], search_path: tuple[str, ...]
) -> Analysis:
    """The analysis with what the user-defined functions it calls run and read, and what
    those call in turn (`bodies`: name -> what its body calls and reads); itself when that
    adds nothing. `search_path`: the analysis' own, by which bodies' unqualified names
    resolve."""
    if not bodies:
        return analysis
    caller = resolution_schema(search_path)
    statements = tuple(_with_bodies(statement, bodies, caller) for statement in analysis.statements)
    if all(new is old for new, old in zip(statements, analysis.statements, strict=True)):
        return analysis
    return dataclasses.replace(analysis, statements=statements, canonical=None)


def with_field_calls(analysis: Analysis, columns_of: Mapping[str, tuple[str, ...]]) -> Analysis:
    """The analysis calling name(q) for each `q.name` over a table the catalog says has no
    column of that name (`o.att_email` runs crm.att_email(o)); itself when there is none."""
    statements = []
    for statement in analysis.statements:
        calls = frozenset(
            name
            for relation, name in statement.field_names
            if (columns := columns_of.get(relation)) is not None and name not in columns
        )
        statements.append(calling(statement, calls) if calls else statement)
    if all(new is old for new, old in zip(statements, analysis.statements, strict=True)):
        return analysis
    return dataclasses.replace(analysis, statements=tuple(statements), canonical=None)


def field_relations(analysis: Analysis) -> frozenset[str]:
    """The tables some `q.name` of the analysis may call a function over."""
    return frozenset(
        relation for statement in analysis.statements for relation, _ in statement.field_names
    )


def called_functions(analysis: Analysis) -> frozenset[str]:
    """The functions the analysis' statements call (with those they reach, once applied)."""
    return _gathered(analysis, "functions")


def used_operators(analysis: Analysis) -> frozenset[str]:
    """The operators the analysis' statements use."""
    return _gathered(analysis, "operators")


def cast_types(analysis: Analysis) -> frozenset[str]:
    """The types the analysis' statements cast values to (but pg_catalog's)."""
    return _gathered(analysis, "cast_types")


def _gathered(analysis: Analysis, field: str) -> frozenset[str]:
    found: set[str] = set()
    for statement in analysis.statements:
        found.update(getattr(statement, field))
    return frozenset(found)


def reached_relations(analysis: Analysis) -> frozenset[str]:
    """The relations whose reach the analysis' decision depends on."""
    found: set[str] = set()
    for statement in analysis.statements:
        found.update(statement.relations_read)
        found.update(statement.relations_written)
    return frozenset(found)


def _with_reached(
    statement: StatementFacts,
    reach: Mapping[str, Reach],
    operators: Mapping[str, Reach],
    cast_types: Mapping[str, Reach],
) -> StatementFacts:
    behind_operators = [
        (function, sources)
        for name, sources in statement.calls_with_columns
        if (found := operators.get(name)) is not None
        for function in sorted(found.read)
    ]
    if behind_operators:
        # An operator given columns calls its function with them: whether that returns a
        # set is judged with the function bodies (_with_bodies).
        calls = tuple(dict.fromkeys([*statement.calls_with_columns, *behind_operators]))
        statement = dataclasses.replace(statement, calls_with_columns=calls)
    reached: set[str] = set()
    unknown = False
    for used, behind in ((statement.operators, operators), (statement.cast_types, cast_types)):
        for name in used:
            found = behind.get(name)
            if found is not None:
                reached |= found.read
                unknown |= found.unknown
    for relation in statement.relations_read:
        found = reach.get(relation)
        if found is not None:
            reached |= found.read
            unknown |= found.unknown
    for relation in statement.relations_written:
        found = reach.get(relation)
        if found is not None:
            reached |= found.read | found.write
            unknown |= found.unknown
    return calling(statement, frozenset(reached), unknown)


def _with_bodies(
    statement: StatementFacts, bodies: Mapping[str, Reach], caller: str
) -> StatementFacts:
    searched = {
        source
        for name, sources in statement.calls_with_columns
        if (body := bodies.get(name)) is not None and body.returns_set
        for source in sources
    }
    if searched:
        # Called in a result column, a set-returning function returns no row where its set
        # is empty: which rows come back depends on the columns it is given.
        searches = {
            PatternMatch(relation, column, "~", None): None for relation, column in sorted(searched)
        }
        patterns = tuple(dict.fromkeys(statement.pattern_matches) | searches)
        statement = dataclasses.replace(statement, pattern_matches=patterns)
    reached: set[str] = set()
    relations: set[str] = set()
    columns: set[tuple[str, str]] = set()
    unknown = False
    pending = list(statement.functions)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        body = bodies.get(name)
        if body is not None:
            reached |= body.read
            unknown |= body.unknown
            relations |= body.relations
            columns |= body.columns
            pending.extend(body.read)
    if relations or columns:
        statement = _reading(statement, relations, columns, caller)
    return calling(statement, frozenset(reached), unknown)


def _reading(
    statement: StatementFacts,
    relations: set[str],
    columns: set[tuple[str, str]],
    caller: str,
) -> StatementFacts:
    """The statement as if it read what the functions it calls read: their results are
    not traced to the columns they come from, so every column a body reads counts as read
    (a function returning customers' emails reads emails, under their rules)."""
    prefix = qualified(CALLER, "")
    here = qualified(caller, "")

    def placed(relation: str) -> str:
        return here + relation[len(prefix) :] if relation.startswith(prefix) else relation

    read = {relation: set(names) for relation, names in statement.columns_read.items()}
    function_reads = {(placed(relation), column) for relation, column in columns}
    for relation, column in function_reads:
        read.setdefault(relation, set()).add(column)
    relations_read = statement.relations_read | {placed(r) for r in relations} | read.keys()
    function_reads |= statement.function_reads
    if function_reads == statement.function_reads and relations_read == statement.relations_read:
        return statement
    return dataclasses.replace(
        statement,
        relations_read=frozenset(relations_read),
        columns_read={relation: frozenset(names) for relation, names in read.items()},
        function_reads=frozenset(function_reads),
    )


def calling(
    statement: StatementFacts, functions: frozenset[str], unknown: bool = False
) -> StatementFacts:
    """The statement as if it also called `functions` (and, if `unknown`, something the
    gateway could not see into); itself when that adds nothing."""
    new = functions - statement.functions
    if not new and (not unknown or statement.dynamic):
        return statement
    kinds = set(statement.kinds)
    destination = statement.copy_destination
    dynamic = statement.dynamic or unknown
    for name in new:
        bare = name.rpartition(".")[2]
        if bare in SQL_TEXT_FUNCTIONS or bare == "set_config":
            dynamic = True  # which SQL, or which setting, is not known
        if bare == "set_config":
            kinds.add(StatementKind.SET)
        as_statement = FUNCTION_STATEMENTS.get(bare)
        if as_statement is not None:
            kind, copy_destination = as_statement
            kinds.add(StatementKind(kind))
            destination = copy_destination or destination
    relations_read = statement.relations_read
    if exposure.reads_other_sessions_statements(new):
        relations_read = relations_read | {exposure.ACTIVITY_RELATION}
    return dataclasses.replace(
        statement,
        functions=statement.functions | new,
        kinds=frozenset(kinds),
        kind=next(kind for kind in KIND_PRIORITY if kind in kinds),
        copy_destination=destination,
        dynamic=dynamic,
        relations_read=relations_read,
    )
