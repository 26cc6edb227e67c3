"""The facts the analysis draws from a statement, on which policy decides.

Plain frozen dataclasses: they are built once per distinct SQL text (cached)
and read on every execution, so they stay cheap to hold and to compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class StatementKind(StrEnum):
    SELECT = "select"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    MERGE = "merge"
    COPY_TO = "copy_to"
    COPY_FROM = "copy_from"
    DDL = "ddl"
    GRANT = "grant"
    SET = "set"
    CALL = "call"
    DO = "do"
    TRANSACTION = "transaction"
    OTHER = "other"


ALL_COLUMNS = "*"
"""In a column set: every column of the relation (SELECT *, t.*, a whole-row reference)."""


@dataclass(frozen=True, slots=True)
class ParameterRef:
    """A bind parameter ($1 is index 1), resolved at Execute from the Bind values."""

    index: int


@dataclass(frozen=True, slots=True)
class PatternMatch:
    """A LIKE, ILIKE, SIMILAR TO or regular-expression match on a column."""

    relation: str  # schema-qualified, e.g. "crm.customers"
    column: str
    operator: str  # "~~" (LIKE), "~~*" (ILIKE), "~", "~*", "similar"
    pattern: str | ParameterRef | None  # None: not a literal nor a parameter (an expression)
    negated: bool = False


@dataclass(frozen=True, slots=True)
class JsonShape:
    """A JSON object a result column builds from columns, with keys the analysis knows:
    masking keeps its structure and masks only the keys that hold personal data.
    `row_to_json(q)`, `to_jsonb(q)` over a subquery, CTE or view, `json_build_object('k',
    v, ...)` with literal keys: `fields`. The same over a base relation, whose columns the
    analysis does not know: `keys_of`, each key the relation's column of that name.
    `json_agg(q)` and `jsonb_agg(q)`: an array of such objects (`aggregated`)."""

    # (key, the (relation, column) pairs its value comes from, computed from them)
    fields: tuple[tuple[str, frozenset[tuple[str, str]], bool], ...] = ()
    keys_of: str | None = None
    aggregated: bool = False


@dataclass(frozen=True, slots=True)
class OutputColumn:
    """One column of a statement's result (SELECT list, RETURNING, COPY ... TO), for masking."""

    # The name PostgreSQL gives the column; None for a `*` expansion of a relation whose columns
    # the analysis does not know (it stands for an unknown number of result columns).
    name: str | None
    # (relation, column) pairs whose values may reach this column; column ALL_COLUMNS: any.
    sources: frozenset[tuple[str, str]]
    # For name None: it stands for exactly the columns of its one source relation, in table
    # order (`*` or `t.*` over a table or view, directly or through a subquery or CTE), so the
    # database's column list may replace it (sql/expansion.py). False where PostgreSQL's
    # expansion differs or is unknown: a USING or NATURAL join's `*` lists the join columns
    # once and first, alias column names rename leading columns, set operations and
    # functions.
    expandable: bool = False
    # Its values are computed from its sources (an expression, a function's result), not
    # one of them as it is: masking then keeps no part of them (custos/policy/masks.py).
    computed: bool = False
    # A JSON object (or array of objects) whose keys are known: see JsonShape.
    json: JsonShape | None = None


@dataclass(frozen=True, slots=True)
class ValueCopy:
    """Values a statement stores (INSERT, UPDATE, MERGE, CREATE TABLE AS, SELECT INTO, a
    view's definition, COPY ... TO a server file or program), and what they come from."""

    # schema-qualified; None: out of the database (COPY ... TO a server file or program)
    relation: str | None
    column: str  # ALL_COLUMNS: which of the relation's columns is not known
    # (relation, column) pairs whose values may reach it; column ALL_COLUMNS: any.
    sources: frozenset[tuple[str, str]]
    # Its values come from what the analysis cannot see (CREATE TABLE AS EXECUTE runs a
    # prepared statement): they may be any personal data.
    unseen: bool = False


@dataclass(frozen=True, slots=True)
class StatementFacts:
    """One statement of a query string."""

    kind: StatementKind
    # Every kind the statement performs: `WITH d AS (DELETE ...) SELECT` is {delete, select};
    # `kind` is the most consequential of them (writes over reads, see analysis docs).
    kinds: frozenset[StatementKind]
    relations_read: frozenset[str] = frozenset()  # schema-qualified, lower-case unless quoted
    relations_written: frozenset[str] = frozenset()
    # relation -> columns; ALL_COLUMNS stands for every column
    columns_read: dict[str, frozenset[str]] = field(default_factory=dict)
    columns_written: dict[str, frozenset[str]] = field(default_factory=dict)
    functions: frozenset[str] = frozenset()  # schema-qualified if written so, else bare name
    # Operators used (schema-qualified if written OPERATOR(schema.op)): user-defined ones
    # run their functions (custos/upstream/reach.py).
    operators: frozenset[str] = frozenset()
    # Types values are cast to: a user-defined type's input function, casts and domain
    # checks run on the value, and a user-defined cast to any type runs its function.
    cast_types: frozenset[str] = frozenset()
    update_or_delete_without_where: bool = False
    pattern_matches: tuple[PatternMatch, ...] = ()
    # LIMIT of the outermost query: None when absent (or LIMIT ALL), an int, or a parameter.
    limit: int | ParameterRef | None = None
    copy_destination: str | None = None  # "stdout", "stdin", "file", "program"
    # Code the gateway cannot see into: DO blocks, EXECUTE of dynamic SQL, unknown functions'
    # bodies are not inspected, so a DO is always dynamic.
    dynamic: bool = False
    # SET search_path / set_config('search_path', ...) in this statement: the new path.
    new_search_path: tuple[str, ...] | None = None
    # PREPARE name AS ...: the name, and the facts are the prepared statement's.
    prepares: str | None = None
    # EXECUTE name: the prepared statement to resolve from the session.
    executes: str | None = None
    # DEALLOCATE name (or ALL as "*").
    deallocates: str | None = None
    # DECLARE name CURSOR: the cursor (a portal, reachable from the protocol too); the facts
    # are its query's. `holdable`: WITH HOLD, so it outlives its transaction.
    declares: str | None = None
    holdable: bool = False
    # CLOSE name (or ALL as "*"); FETCH or MOVE name: the cursor or portal it runs.
    closes: str | None = None
    fetches: str | None = None
    # A transaction statement: "begin", "commit", "rollback", "savepoint", "release",
    # "rollback_to", "prepare" (PREPARE TRANSACTION), ...
    transaction: str | None = None
    # EXPLAIN without ANALYZE does not execute its statement.
    explain_only: bool = False
    # SET ROLE, SET SESSION AUTHORIZATION, RESET ROLE / ALL, DISCARD ALL, set_config('role', ...):
    # the statements that follow run with other privileges.
    sets_role: bool = False
    # new_search_path lasts only until the end of the transaction (SET LOCAL, set_config(.., true)).
    search_path_local: bool = False
    # The result's columns in order, with the base columns each may carry (empty: no result set).
    output_columns: tuple[OutputColumn, ...] = ()
    # The parse node's name (e.g. "VariableShowStmt", "FetchStmt"), to tell statements of one
    # kind apart, above all those of kind OTHER.
    statement_type: str = ""
    # It reads the planner's statistics, which hold sample values of every column they
    # describe (sql/exposure.py): policy counts it as reading every column of every relation.
    reads_statistics: bool = False
    # It gathers the values of many rows into one (array_agg, string_agg, json_agg, xmlagg,
    # ARRAY(SELECT ...), a recursive WITH): its LIMIT bounds the rows returned, not the rows
    # of personal data it reads, so policy counts it as having none.
    collects_rows: bool = False
    # Calls of functions the analysis does not know to return one value, met computing a
    # result column, with the base columns their arguments carry. Once the catalog says
    # one is a user-defined set-returning function (sql/reached.py), what it is given is
    # searched: it returns no row where its set is empty.
    calls_with_columns: tuple[tuple[str, frozenset[tuple[str, str]]], ...] = ()
    # (relation, name) of each `q.name` over a base table: where the table has no column of
    # that name, PostgreSQL calls name(q) (field notation). The catalog's columns decide
    # (sql/reached.py with_field_calls).
    field_names: frozenset[tuple[str, str]] = frozenset()
    # (relation, column) that user-defined functions it calls read in their bodies: their
    # values may come out of those functions untraced (masking masks every column then).
    function_reads: frozenset[tuple[str, str]] = frozenset()
    # Columns compared (with anything: a literal, a join, an IN subquery), ranked, grouped
    # or made distinct: the rows that match carry their values in any other column,
    # unmasked by any lineage (masking masks every column when one of them is masked).
    compared: frozenset[tuple[str, str]] = frozenset()
    # The values it stores in relations (or out of the database), with their lineage: a
    # copy of personal columns where masking does not follow them (policy/copies.py).
    copies: tuple[ValueCopy, ...] = ()


@dataclass(frozen=True, slots=True)
class Analysis:
    """A whole query string: its statements, or why it could not be parsed."""

    statements: tuple[StatementFacts, ...]
    texts: tuple[str, ...] = ()  # each statement's own SQL text, as sent, in order
    error: str | None = None  # set when the text does not parse: policy must deny
    # The SQLSTATE for `error` when the text parses but cannot be analysed (too long, too
    # complex, too deep): None for a syntax error.
    error_sqlstate: str | None = None
    # For a text answered by its shape (see cache.py): the analysis of the first text of that
    # shape, which decides exactly alike. Decisions are remembered by it, not by this copy.
    canonical: Analysis | None = field(default=None, compare=False, repr=False)
    # Whether a session must follow the text once it runs: it prepares, executes or
    # deallocates a statement, declares, fetches or closes a cursor, sets the search path or
    # another setting, may change the schema (DDL, DO, CALL, dynamic code) or ends a
    # transaction. Worked out from the statements unless given (a copy
    # for another text of one shape passes it on).
    session_effects: bool | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.session_effects is None:
            object.__setattr__(self, "session_effects", any(map(_has_effects, self.statements)))

    @property
    def multiple_statements(self) -> bool:
        return len(self.statements) > 1


def _has_effects(statement: StatementFacts) -> bool:
    return (
        statement.dynamic
        or "set_config" in statement.functions
        or statement.prepares is not None
        or statement.executes is not None
        or statement.deallocates is not None
        or statement.declares is not None
        or statement.closes is not None
        or statement.fetches is not None
        or statement.new_search_path is not None
        or not statement.kinds.isdisjoint(_FOLLOWED_KINDS)
    )


_FOLLOWED_KINDS = frozenset(
    {
        StatementKind.DDL,
        StatementKind.DO,
        StatementKind.CALL,
        StatementKind.TRANSACTION,
        StatementKind.SET,  # may change how the server reads later statements
    }
)


HEAVY_BYTES = 64 << 10
"""An analysis or statement weighing more is not remembered by the memos that keep
analyses alive beside the cache (decisions, profiles, reach): their entries are counted,
not weighed, and a few thousand heavy ones would hold gigabytes."""


def statement_bytes(statement: StatementFacts) -> int:
    """About the memory a statement's facts hold (measured with tracemalloc: some 300 bytes a
    result column, 100 an entry of lineage or of the columns read)."""
    outputs = statement.output_columns
    weight = 1024 + 300 * len(outputs) + 100 * sum(len(output.sources) for output in outputs)
    weight += 100 * sum(len(names) for names in statement.columns_read.values())
    weight += 100 * sum(len(sources) for _, sources in statement.calls_with_columns)
    weight += 100 * (len(statement.field_names) + len(statement.compared))
    weight += 300 * len(statement.copies) + 100 * sum(len(c.sources) for c in statement.copies)
    return weight + 100 * len(statement.pattern_matches)


def analysis_bytes(analysis: Analysis) -> int:
    """About the memory an analysis holds: its statements' facts (statement_bytes)."""
    return 1024 + sum(statement_bytes(statement) for statement in analysis.statements)
