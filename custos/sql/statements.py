"""One top-level statement: its kind, and the facts of each sort of statement.

Queries go to the walker. Utility statements (DDL, GRANT, SET, ...) are classified here and
walked generically: every relation they name is written (a foreign key's or LIKE's referenced
table is read), every function they call is listed, and queries inside them are walked as
queries. A statement type with no rule here is kind OTHER, which policy denies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from custos.sql import literals
from custos.sql.collector import Collector
from custos.sql.facts import ALL_COLUMNS, ParameterRef, StatementFacts, StatementKind
from custos.sql.names import Resolver, function_name, strings, truncated
from custos.sql.risks import ROLE_SETTINGS
from custos.sql.scope import Col, base_columns, renamed
from custos.sql.walker import QUERY_NODE_TYPES, Walker, only

Node = Mapping[str, Any]
K = StatementKind

_GRANT_TYPES = frozenset(
    {
        "GrantStmt",
        "GrantRoleStmt",
        "AlterDefaultPrivilegesStmt",
        "CreateRoleStmt",
        "AlterRoleStmt",
        "AlterRoleSetStmt",
        "DropRoleStmt",
        "ReassignOwnedStmt",
        "DropOwnedStmt",
    }
)
_DDL_PREFIXES = ("Create", "Alter", "Drop")
_DDL_TYPES = frozenset(
    {
        "TruncateStmt",
        "CommentStmt",
        "IndexStmt",
        "ReindexStmt",
        "ViewStmt",
        "RuleStmt",
        "DefineStmt",
        "CompositeTypeStmt",
        "RenameStmt",
        "SecLabelStmt",
        "RefreshMatViewStmt",
        "ImportForeignSchemaStmt",
    }
)
_OTHER_KINDS = {
    "TransactionStmt": K.TRANSACTION,
    "ConstraintsSetStmt": K.SET,
}
_RELATION_OBJECTS = frozenset(
    {
        "OBJECT_TABLE",
        "OBJECT_VIEW",
        "OBJECT_MATVIEW",
        "OBJECT_SEQUENCE",
        "OBJECT_INDEX",
        "OBJECT_FOREIGN_TABLE",
    }
)
# Relations under these keys of a utility statement are read, not written.
_READ_KEYS = frozenset({"pktable", "inhRelations", "TableLikeClause"})
_ACCESS_SHARE_LOCK = 1
_CURSOR_OPT_HOLD = 0x20


def statement_facts(
    node: Node, resolver: Resolver, views: Mapping[str, Node] | None = None
) -> StatementFacts:
    """The facts of one statement; `views`: the definitions of views it may read, which the
    walk then reads through to their relations (see custos/sql/views.py)."""
    node_type, body = only(node)
    collector = Collector(node_type, resolver, views)
    dispatch(collector, Walker(collector), node_type, body, returns_rows=True)
    _settle_search_path(collector, node_type, body)
    return collector.facts()


def utility_kind(node_type: str) -> StatementKind:
    if node_type in _GRANT_TYPES:
        return K.GRANT
    if node_type in _DDL_TYPES or node_type.startswith(_DDL_PREFIXES):
        return K.DDL
    return _OTHER_KINDS.get(node_type, K.OTHER)


def dispatch(c: Collector, w: Walker, node_type: str, body: Node, *, returns_rows: bool) -> None:
    """Gather the facts of one statement, which may be nested in EXPLAIN, PREPARE, ...

    returns_rows: whether the statement's result reaches the client (not under EXPLAIN or
    CREATE TABLE AS), which decides whether its output columns are facts.
    """
    if node_type in QUERY_NODE_TYPES:
        _query(c, w, node_type, body, returns_rows)
        return
    handler = _HANDLERS.get(node_type)
    if handler is not None:
        handler(c, w, body)
        return
    c.kinds.add(utility_kind(node_type))
    _walk_utility(c, w, body, read=False)


def _query(c: Collector, w: Walker, node_type: str, body: Node, returns_rows: bool) -> list[Col]:
    """The query's facts; returns its result columns."""
    columns = w.query_body(node_type, body, None)
    if node_type != "SelectStmt":
        if returns_rows:
            c.output_columns = columns
        return columns
    c.kinds.add(K.SELECT)
    c.limit = _limit(body)
    into = body.get("intoClause")
    if into is not None:
        c.kinds.add(K.DDL)
        _new_relation(c, w, into, columns)
    elif returns_rows:
        c.output_columns = columns
    return columns


def _new_relation(c: Collector, w: Walker, into: Node, columns: list[Col]) -> None:
    """CREATE TABLE AS or SELECT INTO: a relation made of the query's columns."""
    relation = c.resolver.range_var(into["rel"])
    c.write(relation)
    w.copy_named(relation, renamed(columns, strings(into.get("colNames") or ())))


def _limit(body: Node) -> int | ParameterRef | None:
    # WITH TIES may return any number of rows past the count.
    if body.get("limitOption") == "LIMIT_OPTION_WITH_TIES":
        return None
    return literals.row_count(body.get("limitCount"))


def _walk_utility(c: Collector, w: Walker, node: Any, *, read: bool) -> None:
    if type(node) is list:
        for item in node:
            _walk_utility(c, w, item, read=read)
        return
    if type(node) is not dict:
        return
    if "relname" in node:  # a RangeVar
        relation = c.resolver.range_var(node)
        if read:
            c.relations_read.add(relation)
        else:
            c.write(relation)
        return
    for key, value in node.items():
        if key == "FuncCall":
            w.func_call(value, None)
        elif key in QUERY_NODE_TYPES:
            w.query_body(key, value, None)
        elif key in _READ_KEYS:
            _walk_utility(c, w, value, read=True)
        elif type(value) is dict or type(value) is list:
            _walk_utility(c, w, value, read=read)


def _copy(c: Collector, w: Walker, body: Node) -> None:
    is_from = bool(body.get("is_from"))
    if body.get("is_program"):
        c.copy_destination = "program"
    elif body.get("filename") is not None:
        c.copy_destination = "file"
    else:
        c.copy_destination = "stdin" if is_from else "stdout"
    columns = strings(body.get("attlist") or ())
    relation_node = body.get("relation")
    if is_from:
        c.kinds.add(K.COPY_FROM)
        if relation_node is not None:
            c.write(c.resolver.range_var(relation_node), columns or (ALL_COLUMNS,))
        # COPY FROM ... WHERE filters the incoming rows, not stored ones.
        w.expr(body.get("whereClause"), None)
        return
    c.kinds.add(K.COPY_TO)
    if relation_node is not None:
        relation = c.resolver.range_var(relation_node)
        c.read((relation, column) for column in columns or (ALL_COLUMNS,))
        c.output_columns = (
            [Col(column, frozenset({(relation, column)})) for column in columns]
            if columns
            else base_columns(relation)
        )
    query = body.get("query")
    if query is not None:
        _query(c, w, *only(query), returns_rows=True)
    if c.copy_destination in ("file", "program"):
        # Out of the database, where no masking follows the values.
        for output in c.output_columns:
            c.copy(None, ALL_COLUMNS, output.sources)


def _explain(c: Collector, w: Walker, body: Node) -> None:
    analyze = False
    for option in body.get("options") or ():
        definition = option["DefElem"]
        if definition.get("defname") == "analyze":
            analyze = _option_enabled(definition.get("arg"))
    dispatch(c, w, *only(body["query"]), returns_rows=False)
    c.explain_only = not analyze


def _option_enabled(arg: Node | None) -> bool:
    # Anything but a clear "off" counts as on: EXPLAIN ANALYZE executes its statement.
    if arg is None:
        return True
    node_type, value = only(arg)
    if node_type == "String":
        return literals.boolean({"A_Const": {"sval": value}}) is not False
    if node_type == "Integer":
        return bool(value.get("ival", 0))
    if node_type == "Boolean":
        return bool(value.get("boolval", False))
    return True


def _prepare(c: Collector, w: Walker, body: Node) -> None:
    c.prepares = body.get("name", "")
    dispatch(c, w, *only(body["query"]), returns_rows=True)


def _declare_cursor(c: Collector, w: Walker, body: Node) -> None:
    # The cursor's rows reach the client through FETCH (or a protocol Execute of the
    # portal), which the session decides on these same facts.
    c.declares = body.get("portalname", "")
    c.holdable = bool(body.get("options", 0) & _CURSOR_OPT_HOLD)
    dispatch(c, w, *only(body["query"]), returns_rows=True)


def _close_portal(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.OTHER)
    c.closes = body.get("portalname") or "*"


def _fetch(c: Collector, w: Walker, body: Node) -> None:
    # Kind OTHER: the session decides a FETCH or MOVE on the facts of the portal it runs.
    c.kinds.add(K.OTHER)
    c.fetches = body.get("portalname", "")


def _transaction(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.TRANSACTION)
    c.transaction = str(body.get("kind", "")).removeprefix("TRANS_STMT_").lower()


def _execute(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.OTHER)
    c.executes = body.get("name", "")
    w.expr(body.get("params"), None)


def _deallocate(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.OTHER)
    name = body.get("name")
    c.deallocates = "*" if body.get("isall") or name is None else name


def _create_table_as(c: Collector, w: Walker, body: Node) -> None:
    """CREATE TABLE AS, CREATE MATERIALIZED VIEW, and either of them AS EXECUTE."""
    c.kinds.add(K.DDL)
    into = body["into"]
    node_type, query = only(body["query"])
    if node_type == "ExecuteStmt":
        # Not decided as the prepared statement it runs, as a plain EXECUTE is: its rows
        # go into the new relation, not to the client, so its masking would not apply.
        relation = c.resolver.range_var(into["rel"])
        c.write(relation)
        c.copy(relation, ALL_COLUMNS, (), unseen=True)
        w.expr(query.get("params"), None)
        return
    if node_type in QUERY_NODE_TYPES:
        _new_relation(c, w, into, _query(c, w, node_type, query, returns_rows=False))
        return
    c.write(c.resolver.range_var(into["rel"]))
    dispatch(c, w, node_type, query, returns_rows=False)


def _create_view(c: Collector, w: Walker, body: Node) -> None:
    # A view stores no rows, yet reading it returns its query's values under its own
    # names, which no catalog entry follows (a temporary one is not even in the catalog
    # the gateway reads).
    c.kinds.add(K.DDL)
    relation = c.resolver.range_var(body["view"])
    c.write(relation)
    columns = w.query(body["query"], None)
    w.copy_named(relation, renamed(columns, strings(body.get("aliases") or ())))


def _do(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.DO)
    c.dynamic = True


def _call(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.CALL)
    w.func_call(body["funccall"], None)


def _variable_set(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.SET)
    kind = body.get("kind")
    # PostgreSQL finds a setting by its name in any case: SET "ROLE" is SET role.
    name = (body.get("name") or "").lower()
    if kind == "VAR_RESET_ALL":
        c.new_search_path = ()
        c.sets_role = True
    elif name == "search_path":
        if kind == "VAR_SET_VALUE":
            values = [literals.constant(arg) for arg in body.get("args") or ()]
            c.new_search_path = tuple(truncated(str(value)) for value in values)
        elif kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
            c.new_search_path = ()
        else:
            return  # SET ... FROM CURRENT keeps the path
        c.search_path_local = bool(body.get("is_local"))
    elif name in ROLE_SETTINGS:
        c.sets_role = True


def _discard(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.OTHER)
    if body.get("target") == "DISCARD_ALL":
        # DISCARD ALL resets the session: role, settings, prepared statements.
        c.new_search_path = ()
        c.sets_role = True
        c.deallocates = "*"


def _lock(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.OTHER)
    for item in body.get("relations") or ():
        relation = c.resolver.range_var(only(item)[1])
        if body.get("mode") == _ACCESS_SHARE_LOCK:
            c.relations_read.add(relation)
        else:
            c.write(relation)


def _drop(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.DDL)
    if body.get("removeType") in _RELATION_OBJECTS:
        for item in body.get("objects") or ():
            parts = strings(only(item)[1].get("items") or ())
            if parts:
                c.write(c.resolver.dotted(parts))


def _comment(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.DDL)
    object_type = body.get("objtype")
    node = body.get("object")
    parts = strings(only(node)[1].get("items") or ()) if node and "List" in node else []
    if object_type == "OBJECT_COLUMN":
        parts = parts[:-1]
    elif object_type not in _RELATION_OBJECTS:
        return
    if parts:
        c.write(c.resolver.dotted(parts))


def _rename(c: Collector, w: Walker, body: Node) -> None:
    c.kinds.add(K.GRANT if body.get("renameType") == "OBJECT_ROLE" else K.DDL)
    _walk_utility(c, w, body, read=False)


def _create_trigger(c: Collector, w: Walker, body: Node) -> None:
    # The trigger's function runs later, on others' statements: policy should know which.
    c.kinds.add(K.DDL)
    c.functions.add(function_name(body.get("funcname") or ()))
    _walk_utility(c, w, body, read=False)


def _settle_search_path(c: Collector, node_type: str, body: Node) -> None:
    """set_config('search_path', ...) sets the path only as a plain `SELECT set_config(...)`.

    Anywhere else (under a WHERE, in a view, a prepared statement, with a computed value) we
    cannot tell whether or to what it changes the path: the statement is dynamic.
    """
    calls = c.search_path_calls
    if not calls:
        return
    call = calls[0]
    if (
        node_type == "SelectStmt"
        and len(calls) == 1
        and call.path is not None
        and call.local is not None
        and _is_plain_select(body, call.call)
    ):
        c.new_search_path = call.path
        c.search_path_local = call.local
    else:
        c.dynamic = True


_CLAUSES_THAT_MAY_SKIP = (
    "fromClause",
    "whereClause",
    "havingClause",
    "groupClause",
    "valuesLists",
    "withClause",
    "limitCount",
    "limitOffset",
    "intoClause",
    "larg",
)


def _is_plain_select(body: Node, call: Node) -> bool:
    if any(key in body for key in _CLAUSES_THAT_MAY_SKIP):
        return False
    return any(
        item["ResTarget"].get("val", {}).get("FuncCall") is call
        for item in body.get("targetList") or ()
    )


_HANDLERS: dict[str, Callable[[Collector, Walker, Node], None]] = {
    "CopyStmt": _copy,
    "ExplainStmt": _explain,
    "PrepareStmt": _prepare,
    "DeclareCursorStmt": _declare_cursor,
    "ClosePortalStmt": _close_portal,
    "FetchStmt": _fetch,
    "TransactionStmt": _transaction,
    "ExecuteStmt": _execute,
    "DeallocateStmt": _deallocate,
    "CreateTableAsStmt": _create_table_as,
    "ViewStmt": _create_view,
    "DoStmt": _do,
    "CallStmt": _call,
    "VariableSetStmt": _variable_set,
    "DiscardStmt": _discard,
    "LockStmt": _lock,
    "DropStmt": _drop,
    "CommentStmt": _comment,
    "RenameStmt": _rename,
    "CreateTrigStmt": _create_trigger,
    "CreateEventTrigStmt": _create_trigger,
}
