"""The walk over queries and expressions: what a statement reads, writes and calls.

Works on pglast's JSON parse tree (parse_sql_json + json.loads), which is several times faster
to get than pglast's Python AST. A node is {"NodeType": {fields}}; fields typed as a specific
node (a RangeVar relation, a set operation's branches) hold the fields directly.

Every column reference is recorded where it occurs, resolved through aliases, CTEs and
subqueries to base relation columns (see scope.py). A query's output columns carry their
lineage (the base columns their values come from) so that outer references and the statement's
result can be traced back. Expression nodes the walk has no rule for are walked generically, so
a column reference or function call is found wherever it sits.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from custos.sql import budget, literals
from custos.sql.collector import Collector, SearchPathCall
from custos.sql.facts import ALL_COLUMNS, JsonShape, ParameterRef, PatternMatch, StatementKind
from custos.sql.names import function_name, split_identifier_list, strings
from custos.sql.risks import (
    BUILTIN_OPERATORS,
    COLLECTING_AGGREGATES,
    FUNCTION_STATEMENTS,
    PATTERN_EXPR_KINDS,
    PATTERN_FUNCTIONS,
    PATTERN_OPERATORS,
    ROLE_SETTINGS,
    ROW_FUNCTIONS,
    SELECTING_AGGREGATES,
    SET_RETURNING_FUNCTIONS,
    SQL_TEXT_FUNCTIONS,
    STATE_SETTING_FUNCTIONS,
)
from custos.sql.scope import (
    NO_SOURCES,
    UNCERTAIN,
    Col,
    Rte,
    Scope,
    Source,
    base_columns,
    renamed,
    resolve_name,
    resolve_qualified,
    resolve_schema_qualified,
    sources_of,
    unexpandable,
)

Node = Mapping[str, Any]
K = StatementKind

QUERY_NODE_TYPES = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_SOURCE_SUBLINKS = frozenset({"EXPR_SUBLINK", "ARRAY_SUBLINK", "MULTIEXPR_SUBLINK"})
_FUNCTION_FROM_ITEMS = frozenset({"RangeFunction", "RangeTableFunc", "JsonTable"})


def only(node: Node) -> tuple[str, Any]:
    """The type and fields of a wrapped node."""
    for item in node.items():
        return item
    return "", {}


def _alias_names(alias: Node | None) -> list[str]:
    return strings(alias.get("colnames") or ()) if alias else []


# JSON builders whose keys the analysis can know: the number of arguments each takes.
_JSON_OBJECT_BUILDERS = frozenset({"json_build_object", "jsonb_build_object"})
_JSON_AGGREGATES = frozenset({"json_agg", "jsonb_agg"})
_JSON_ROW_FUNCTIONS = {"row_to_json": 1, "to_json": 1, "to_jsonb": 1, "json_agg": 1, "jsonb_agg": 1}


def _row_shape(arg: Node, scope: Scope, aggregated: bool) -> JsonShape | None:
    """The keys of a whole row turned into JSON: a FROM item's name (`q`, or `q.*`) that no
    column of the query takes (a column so named would be the value instead)."""
    ref = arg.get("ColumnRef")
    if ref is None:
        return None
    names = ref["fields"]
    starred = len(names) == 2 and "A_Star" in names[1]
    if not starred and len(names) != 1:
        return None
    name = names[0].get("String", {}).get("sval")
    rte = scope.find_rte(name) if name else None
    if rte is None or name is None:
        return None
    if not starred and _may_be_a_column(name, scope, rte):
        return None
    if rte.plain_relation is not None:
        return JsonShape(keys_of=rte.plain_relation, aggregated=aggregated)
    names_seen = [column.name for column in rte.columns]
    if any(
        column.name is None or column.name == UNCERTAIN or column.guessed for column in rte.columns
    ) or len(set(names_seen)) != len(names_seen):
        return None
    fields = tuple((str(column.name), column.sources, column.opaque) for column in rte.columns)
    return JsonShape(fields, aggregated=aggregated)


def _may_be_a_column(name: str, scope: Scope, item: Rte) -> bool:
    """Whether a bare name may be a column rather than the FROM item of that name: some
    item of the query may have such a column (a base relation may have any). The item's
    own base relation may too; the masking then finds a value that is not the row's
    object, and masks it whole (custos/masking/json_shapes.py)."""
    level: Scope | None = scope
    while level is not None:
        for rte in level.rtes:
            if rte is item and rte.plain_relation is not None:
                continue
            if rte.lookup(name) is not None:
                return True
        level = level.parent
    return False


def _merged_order(
    columns: list[Col], merged: list[Col], using: list[str], natural: bool
) -> list[Col]:
    """A USING or NATURAL join's columns as PostgreSQL orders them: the merged columns once,
    first, then each side's others. Where a NATURAL join's common names are not known (a
    side of unknown columns), neither is any position: one column of unknown width."""
    if natural:
        if any(column.name is None or _maybe_named(column) for column in columns):
            sources = sources_of(columns)
            return [Col(None, sources, any(column.opaque for column in columns))]
        seen: dict[str, list[Col]] = {}
        for column in columns:
            seen.setdefault(str(column.name), []).append(column)
        common = [name for name, found in seen.items() if len(found) > 1]
        merged = [Col(name, sources_of(seen[name]), True) for name in common]
        using = common
    rest = [column for column in columns if column.name not in using]
    return [*merged, *rest]


def _iterated(columns: list[Col], sources: frozenset[Source] | None = None) -> list[Col]:
    """A recursive CTE's columns: each may hold any of `sources` (by default, any of these
    columns' values), computed."""
    every = sources_of(columns) if sources is None else sources
    return [Col(column.name, every, opaque=True, guessed=column.guessed) for column in columns]


def _union(left: list[Col], right: list[Col]) -> list[Col]:
    """The columns of a UNION / INTERSECT / EXCEPT: each side's values, position by position."""
    if len(left) == len(right) and all(c.name is not None for c in (*left, *right)):
        # A value computed in either branch stays computed in the union.
        return [
            Col(a.name, a.sources | b.sources, a.opaque or b.opaque, guessed=a.guessed)
            for a, b in zip(left, right, strict=True)
        ]
    # A `*` of unknown width breaks the positions: any column may carry any of the values.
    everything = sources_of((*left, *right))
    opaque = any(c.opaque for c in (*left, *right))
    named = [Col(c.name, everything, opaque, guessed=c.guessed) for c in left if c.name]
    return [*named, Col(None, everything, opaque)]


def output_name(node: Node) -> str:
    """The column name PostgreSQL gives an unaliased SELECT-list expression (its
    FigureColname); UNCERTAIN where the walk does not know it, which every name may then
    reach (scope.py)."""
    node_type, body = only(node)
    if node_type == "ColumnRef":
        last = body["fields"][-1]
        return last["String"]["sval"] if "String" in last else UNCERTAIN
    if node_type == "FuncCall":
        return str(body["funcname"][-1]["String"]["sval"])
    if node_type == "TypeCast":
        inner = output_name(body.get("arg", {}))
        if inner != UNCERTAIN:
            return inner
        names = strings(body.get("typeName", {}).get("names") or ())
        return names[-1] if names else inner
    if node_type == "CollateClause":
        return output_name(body.get("arg", {}))
    if node_type == "A_Indirection":
        # The last field selected, subscripts after it ignored; else the value's own name.
        fields = strings(body.get("indirection") or ())
        return fields[-1] if fields else output_name(body.get("arg", {}))
    if node_type == "A_Expr" and body.get("kind") == "AEXPR_NULLIF":
        return "nullif"
    if node_type == "MinMaxExpr":
        return "greatest" if body.get("op") == "IS_GREATEST" else "least"
    if node_type == "XmlExpr":
        return _XML_NAMES.get(body.get("op", ""), UNCERTAIN)
    if node_type == "SubLink":
        kind = body.get("subLinkType")
        if kind == "EXPR_SUBLINK":
            return _first_target_name(body.get("subselect", {}))
        return _SUBLINK_NAMES.get(kind, UNCERTAIN)
    return _FIXED_NAMES.get(node_type, UNCERTAIN)


def _first_target_name(query: Node) -> str:
    """The name of a scalar subquery's column, which PostgreSQL gives the subquery."""
    select = query.get("SelectStmt") if type(query) is dict else None
    items = (select or {}).get("targetList") or ()
    if not items:
        return UNCERTAIN
    target = items[0].get("ResTarget", {})
    return str(target["name"]) if target.get("name") else output_name(target.get("val", {}))


_XML_NAMES = {
    "IS_XMLCONCAT": "xmlconcat",
    "IS_XMLELEMENT": "xmlelement",
    "IS_XMLFOREST": "xmlforest",
    "IS_XMLPARSE": "xmlparse",
    "IS_XMLPI": "xmlpi",
    "IS_XMLROOT": "xmlroot",
    "IS_XMLSERIALIZE": "xmlserialize",
}
_SUBLINK_NAMES = {"EXISTS_SUBLINK": "exists", "ARRAY_SUBLINK": "array"}


_FIXED_NAMES = {
    "XmlSerialize": "xmlserialize",
    "CaseExpr": "case",
    "A_ArrayExpr": "array",
    "RowExpr": "row",
    "CoalesceExpr": "coalesce",
}


class Walker:
    """Walks one statement's queries and expressions into its Collector."""

    __slots__ = ("_c", "_filtering", "_scans", "_sink")

    def __init__(self, collector: Collector) -> None:
        self._c = collector
        # The lineage of the output column being walked, when there is one.
        self._sink: set[Source] | None = None
        self._scans: set[str] = set()  # relations and CTEs a FROM item has read
        # True while walking a filter (WHERE, HAVING, ON) through AND and OR only: a pattern
        # met there selects the rows it matches. Anywhere else (under NOT, compared with a
        # boolean, in a CASE, in a select list) its result may be turned around.
        self._filtering = False

    # -- queries ---------------------------------------------------------------------------

    def query(self, node: Node, outer: Scope | None, *, record_star: bool = True) -> list[Col]:
        """A wrapped query (subquery, CTE body, INSERT source); returns its output columns."""
        node_type, body = only(node)
        return self.query_body(node_type, body, outer, record_star=record_star)

    def query_body(
        self, node_type: str, body: Node, outer: Scope | None, *, record_star: bool = True
    ) -> list[Col]:
        if node_type == "SelectStmt":
            return self.select(body, outer, record_star=record_star)
        if node_type == "InsertStmt":
            return self.insert(body, outer)
        if node_type == "UpdateStmt":
            return self.update(body, outer)
        if node_type == "DeleteStmt":
            return self.delete(body, outer)
        if node_type == "MergeStmt":
            return self.merge(body, outer)
        # Not a query we know: fail closed, but still find what it names and calls.
        self._c.dynamic = True
        self.expr(body, outer)
        return [Col(None, NO_SOURCES, opaque=True)]

    def select(self, body: Node, outer: Scope | None, *, record_star: bool = True) -> list[Col]:
        scope = Scope(outer)
        with_clause = body.get("withClause")
        if with_clause is not None:
            self.with_clause(with_clause, scope)
        if body.get("op", "SETOP_NONE") != "SETOP_NONE":
            # Each branch's rows are its own: a relation read in both is not read twice
            # into one row.
            before = set(self._scans)
            left = self.select(body["larg"], scope, record_star=record_star)
            after_left = self._scans
            self._scans = set(before)
            right = self.select(body["rarg"], scope, record_star=record_star)
            self._scans |= after_left
            columns = _union(left, right)
            if body.get("op") in ("SETOP_EXCEPT", "SETOP_INTERSECT"):
                # Rows kept or dropped by comparing whole rows: a test of every column.
                for column in columns:
                    if column.sources:
                        self.add_searches(set(column.sources), "~", None, False)
            elif not body.get("all"):
                self.distinct_rows(columns)
        elif "valuesLists" in body:
            columns = self.values(body["valuesLists"], scope)
        else:
            self._c.kinds.add(K.SELECT)
            if body.get("lockingClause"):
                # FOR UPDATE / SHARE locks the rows it reads, holding other sessions' writes:
                # decided as the LOCK it amounts to (kind other), besides the read.
                self._c.kinds.add(K.OTHER)
            from_clause = body.get("fromClause")
            if from_clause:
                self.from_clause(from_clause, scope)
            columns = self.target_list(body.get("targetList") or (), scope, record_star)
            for key in ("whereClause", "havingClause"):
                clause = body.get(key)
                if clause:
                    self.condition(clause, scope)
            self.expr(body.get("windowClause"), scope)
            for key in ("groupClause", "distinctClause"):
                clause = body.get(key)
                if clause:
                    self.output_refs(clause, scope, columns)
                    self.keys(clause, scope, columns)
            if body.get("distinctClause") == [{}]:  # DISTINCT: every output column is a key
                self.distinct_rows(columns)
        sort_clause = body.get("sortClause")
        if sort_clause:
            self.output_refs(sort_clause, scope, columns)
            self.keys(sort_clause, scope, columns)
        for key in ("limitOffset", "limitCount"):
            clause = body.get(key)
            if clause:
                self.expr(clause, scope)
                if _column_refs(clause, into_subqueries=True):
                    # A LIMIT or OFFSET computed from an outer query's column picks rows by
                    # it (LATERAL (SELECT 1 LIMIT f(c.name))): a search of what it reads.
                    self.unclear_search(clause, scope)
        return columns

    def values(self, rows: Sequence[Node], scope: Scope) -> list[Col]:
        lineage: list[set[Source]] = []
        widening: set[int] = set()  # where a `(x).*` stands for a number of columns
        for row in rows:
            for index, item in enumerate(row["List"].get("items") or ()):
                sources = self.sunk(item, scope)
                if _expands(item):
                    widening.add(index)
                if index < len(lineage):
                    lineage[index] |= sources
                else:
                    lineage.append(sources)
        # Values of rows given in the text: any that comes from a column is computed from
        # it (a LATERAL VALUES (split_part(c.name, ' ', 2))), and compared as such.
        return [
            Col(None if i - 1 in widening else f"column{i}", frozenset(s), opaque=bool(s))
            for i, s in enumerate(lineage, start=1)
        ]

    def target_list(self, items: Iterable[Node], scope: Scope, record_star: bool) -> list[Col]:
        columns: list[Col] = []
        for item in items:
            target = item["ResTarget"]
            value = target.get("val")
            if value is None:
                continue
            ref = value.get("ColumnRef")
            if ref is not None:
                last = ref["fields"][-1]
                if "A_Star" in last:
                    expanded = self.star(ref["fields"], scope)
                    if record_star:
                        for column in expanded:
                            self._use(column.sources)
                    columns.extend(expanded)
                    continue
                # A plain column, the most common target: no need for a lineage sink.
                sources = self.column_sources(ref["fields"], scope)
                self._use(sources)
                name = target.get("name") or last["String"]["sval"]
                # A computed column of a subquery or CTE stays computed when passed on.
                computed = _computed_column(scope, ref["fields"])
            else:
                sources = self.sunk(value, scope)
                computed = bool(sources)  # a value computed from columns (opaque)
                if _expands(value):
                    # `(x).*` stands for as many columns as x has fields: unknown here.
                    columns.append(Col(None, frozenset(sources), opaque=True))
                    continue
                shape = self.json_shape(value, scope) if computed else None
                if not target.get("name"):
                    # Named by PostgreSQL's rules (FigureColname), which the walk mirrors
                    # only in part: an outer reference by another name may mean it too.
                    name = output_name(value)
                    columns.append(
                        Col(name, frozenset(sources), computed, guessed=True, json=shape)
                    )
                    continue
                columns.append(Col(target["name"], frozenset(sources), True, json=shape))
                continue
            columns.append(Col(name, frozenset(sources), opaque=computed))
        return columns

    def json_shape(self, value: Node, scope: Scope) -> JsonShape | None:
        """The keys of a JSON object a SELECT-list call builds, with their lineage; None
        where they are not known (the whole value is then masked)."""
        call = value.get("FuncCall")
        if call is None or call.get("over") or call.get("agg_star"):
            return None
        parts = strings(call["funcname"])
        if parts[:-1] not in ([], ["pg_catalog"]):
            return None
        name = parts[-1]
        args: Sequence[Node] = call.get("args") or ()
        if call.get("func_variadic") or any("NamedArgExpr" in arg for arg in args):
            return None  # the arguments are not the ones written
        if name in _JSON_OBJECT_BUILDERS:
            return self.built_object(args, scope)
        if name in _JSON_ROW_FUNCTIONS and len(args) == _JSON_ROW_FUNCTIONS[name]:
            return _row_shape(args[0], scope, aggregated=name in _JSON_AGGREGATES)
        return None

    def built_object(self, args: Sequence[Node], scope: Scope) -> JsonShape | None:
        """`json_build_object('k', v, ...)`: literal, distinct keys, each value's lineage."""
        if len(args) % 2:
            return None
        fields: list[tuple[str, frozenset[Source], bool]] = []
        for key_node, value in zip(args[::2], args[1::2], strict=True):
            # A bare string constant only: a cast changes the key (`'a'::char(2)` is "a ").
            key = literals.string(key_node) if "A_Const" in key_node else None
            if key is None or any(key == known for known, _, _ in fields):
                return None  # a computed key, or a key twice (json keeps both)
            ref = value.get("ColumnRef")
            sources = frozenset(self.sunk(value, scope))
            if ref is None or "A_Star" in ref["fields"][-1]:
                computed = True
            else:
                computed = _computed_column(scope, ref["fields"])
            fields.append((key, sources, bool(sources) and computed))
        return JsonShape(tuple(fields))

    def qualified_rte(self, qualifier: list[str], scope: Scope | None) -> Rte | None:
        """The FROM item `q` or `schema.table` names: the nearest item so called, or for a
        schema-qualified name the unaliased relation itself, at whatever level it is (an
        inner item may share its name)."""
        if scope is None:
            return None
        if len(qualifier) < 2:
            return scope.find_rte(qualifier[-1])
        relation = self._c.resolver.name(qualifier[-2], qualifier[-1])
        level: Scope | None = scope
        while level is not None:
            for rte in level.rtes:
                named = rte.relation == relation or rte.view == relation
                if named and rte.refname == qualifier[-1] and not rte.aliased:
                    return rte
            level = level.parent
        return None

    def star(self, fields: Sequence[Node], scope: Scope) -> list[Col]:
        """The columns `*` or `q.*` stands for in a SELECT list or RETURNING."""
        qualifier = strings(fields[:-1])
        if qualifier:
            found = self.qualified_rte(qualifier, scope)
            rtes = [] if found is None else [found]
        else:
            rtes = [rte for rte in scope.rtes if rte.expands]
        budget.spend(len(rtes) + 1)
        columns: list[Col] = []
        for rte in rtes:
            rte.touched += 1
            columns.extend(
                unexpandable(rte.columns) if rte.merged and not qualifier else rte.columns
            )
        if len(columns) > budget.MAX_TARGET_COLUMNS:
            raise budget.TooManyColumns(budget.TOO_MANY_COLUMNS.format(columns=len(columns)))
        return columns

    def output_refs(self, items: Iterable[Node], scope: Scope, columns: list[Col]) -> None:
        """ORDER BY / GROUP BY / DISTINCT ON, where a bare name may be an output column."""
        names = {column.name for column in columns}
        for item in items:
            sort_by = item.get("SortBy")
            node = sort_by.get("node", {}) if sort_by is not None else item
            ref = node.get("ColumnRef")
            if ref is not None and len(ref["fields"]) == 1:
                field = ref["fields"][0]
                if "String" in field and field["String"]["sval"] in names:
                    continue  # an output column: its reads were recorded with it
            self.expr(item, scope)

    def keys(self, items: Iterable[Node], scope: Scope | None, columns: Sequence[Col]) -> None:
        """Keys that rank, group or pick rows (ORDER BY, GROUP BY, DISTINCT ON, a window's
        PARTITION BY and ORDER BY). Ranked, grouped or picked by a value computed from a
        column, the rows that come first or alone are those that match (ORDER BY
        length(name) - length(replace(name, 'mith', ''))), whether the key is written out,
        named by its alias or number, or computed in a subquery: a search of the column."""
        for item in items:
            if type(item) is not dict:
                continue
            sort_by = item.get("SortBy")
            key = sort_by.get("node") if sort_by is not None else item
            grouping = key.get("GroupingSet") if type(key) is dict else None
            if grouping is not None:
                self.keys(grouping.get("content") or (), scope, columns)
                continue
            output = _sort_output(key, columns)
            # Ranked, grouped or made distinct, values are compared with every other row's,
            # the statement's made values too (StatementFacts.compared).
            self._c.compared.update(
                output.sources if output is not None else self.traced(key, scope)
            )
            if output is not None:
                if output.opaque and output.sources:
                    self.add_searches(set(output.sources), "~", None, False)
            elif not _plain_side(key, scope) or _whole_row(key, scope):
                # A whole row is ranked by its type's operator class, which may be anyone's
                # function (CREATE OPERATOR CLASS ... DEFAULT FOR TYPE crm.orders).
                self.unclear_search(key, scope)

    def distinct_rows(self, columns: Sequence[Col]) -> None:
        """Rows made distinct (DISTINCT, UNION): by a value computed from a column, every
        row that does not match collapses into one and the matches stand out (DISTINCT
        id * f(name)): a search of it."""
        for column in columns:
            # Collapsed with any other row's equal value, a made one too: compared.
            self._c.compared.update(column.sources)
            if column.opaque and column.sources:
                self.add_searches(set(column.sources), "~", None, False)

    def window(self, body: Node, scope: Scope | None) -> None:
        """A window's keys rank and group rows as ORDER BY and GROUP BY do."""
        self.expr(body, scope)
        for key in ("partitionClause", "orderClause"):
            clause = body.get(key)
            if clause:
                self.keys(clause, scope, ())

    def with_clause(self, clause: Node, scope: Scope) -> None:
        ctes = [item["CommonTableExpr"] for item in clause.get("ctes") or ()]
        recursive = bool(clause.get("recursive"))
        if recursive:
            self._c.collects_rows = True  # each step may append another row's values
            # Every CTE of a recursive WITH is visible in all of them, itself included.
            for cte in ctes:
                placeholder = [Col(None, NO_SOURCES, opaque=True)]
                scope.ctes[cte["ctename"]] = renamed(
                    placeholder, strings(cte.get("aliascolnames") or ())
                )
        # In a recursive WITH a CTE may read one declared after it: read them again until
        # their columns settle (once per CTE, and once more to see them settled).
        for _ in range(len(ctes) + 1 if recursive else 1):
            before = [scope.ctes.get(cte["ctename"]) for cte in ctes]
            self.ctes(ctes, recursive, scope)
            if [scope.ctes.get(cte["ctename"]) for cte in ctes] == before:
                break
        else:
            if recursive and len(ctes) > 1:
                # Not settled: any of them may hold any of their values, computed.
                held = [scope.ctes[cte["ctename"]] for cte in ctes]
                every = sources_of(column for columns in held for column in columns)
                for cte, columns in zip(ctes, held, strict=True):
                    scope.ctes[cte["ctename"]] = _iterated(columns, every)

    def ctes(self, ctes: list[Node], recursive: bool, scope: Scope) -> None:
        for cte in ctes:
            names = strings(cte.get("aliascolnames") or ())
            query = cte["ctequery"]
            select = query.get("SelectStmt")
            if (
                recursive
                and select is not None
                and select.get("op", "SETOP_NONE") != "SETOP_NONE"
                and "withClause" not in select
            ):
                # The non-recursive term fixes the columns the recursive term reads back; each
                # step may then move any column's value, computed, into any other. So every
                # column carries all their sources, computed, and the recursive term is read
                # again with the columns so (its tests then see what they test).
                left = self.select(select["larg"], scope)
                scope.ctes[cte["ctename"]] = renamed(left, names)
                right = self.select(select["rarg"], scope)
                columns = _iterated(_union(left, right))
                scope.ctes[cte["ctename"]] = renamed(columns, names)
                self.select(select["rarg"], scope)
                for key in ("sortClause", "limitOffset", "limitCount"):
                    self.expr(select.get(key), scope)
            else:
                columns = self.query(query, scope)
                if recursive:
                    # It may read itself in a form the walk does not split into its terms
                    # (its own WITH first): any step may move any value into any column.
                    columns = _iterated(columns)
            columns = renamed(columns, names)
            # SEARCH and CYCLE add columns (an order, a cycle mark, the path of rows) made of
            # the columns they name, or of any: computed from all of them.
            added = [
                (cte.get("search_clause") or {}).get("search_seq_column"),
                (cte.get("cycle_clause") or {}).get("cycle_mark_column"),
                (cte.get("cycle_clause") or {}).get("cycle_path_column"),
            ]
            if any(added):
                every = sources_of(columns)
                columns = [*columns, *(Col(name, every, opaque=True) for name in added if name)]
            scope.ctes[cte["ctename"]] = columns

    # -- FROM ------------------------------------------------------------------------------

    def from_clause(self, items: Iterable[Node], scope: Scope) -> None:
        for item in items:
            scope.rtes.extend(self.from_item(item, scope, scope.rtes))

    def from_item(self, item: Node, scope: Scope, lateral: list[Rte]) -> list[Rte]:
        """The FROM items `item` makes visible; `lateral`: those a LATERAL item may use."""
        node_type, body = only(item)
        if node_type == "RangeVar":
            return [self.range_var(body, scope)]
        if node_type == "JoinExpr":
            return self.join(body, scope, lateral)
        if node_type == "RangeSubselect":
            inner = Scope(scope.parent, list(lateral) if body.get("lateral") else None, scope.ctes)
            columns = self.query(body["subquery"], inner)
            alias = body.get("alias")
            refname = alias["aliasname"] if alias else None
            return [Rte(refname, renamed(columns, _alias_names(alias)))]
        if node_type in _FUNCTION_FROM_ITEMS:
            return [self.function_item(node_type, body, scope, lateral)]
        if node_type == "RangeTableSample":
            rtes = self.from_item(body["relation"], scope, lateral)
            for key in ("args", "repeatable"):
                clause = body.get(key)
                self.expr(clause, scope)
                if _column_refs(clause, into_subqueries=True):
                    # A sample's share (or seed) computed from an outer query's column
                    # picks the rows: TABLESAMPLE SYSTEM (100 * f(c.name)) is empty where
                    # f is 0. A search of what it reads, as such a LIMIT is.
                    self.unclear_search(clause, scope)
            return rtes
        self._c.dynamic = True
        self.expr(body, scope)
        return []

    def range_var(self, range_var: Node, scope: Scope) -> Rte:
        name = range_var["relname"]
        alias = range_var.get("alias")
        refname = alias["aliasname"] if alias else name
        if "schemaname" not in range_var:
            cte = scope.find_cte(name)
            if cte is not None:
                self.scanned(f"WITH {name}")
                return Rte(refname, renamed(cte, _alias_names(alias)))
        relation = self._c.resolver.range_var(range_var)
        self._c.relations_read.add(relation)
        self.scanned(relation)
        definition = self._c.views.get(relation)
        if definition is not None:
            columns = renamed(self.view_columns(definition), _alias_names(alias))
            return Rte(refname, columns, aliased=alias is not None, view=relation)
        columns = renamed(base_columns(relation), _alias_names(alias))
        return Rte(refname, columns, relation, aliased=alias is not None)

    def view_columns(self, definition: Node) -> list[Col]:
        """A view's columns, read through its definition as the subquery it is: the base
        columns each comes from, and whether it is computed from them, so that what the
        statement does with them is judged as if it had written the definition out.

        The definition is the database's, not the statement's: its own filters and keys
        are not the statement's searches, and the columns it reads count as read where the
        statement uses them. The relations and functions it reads count as the statement's.
        """
        c = self._c
        patterns, columns_read, calls = c.patterns, c.columns_read, c.calls_with_columns
        sink, filtering = self._sink, self._filtering
        c.patterns, c.columns_read, c.calls_with_columns = {}, {}, {}
        self._sink, self._filtering = None, False
        try:
            return self.query(definition, None)
        finally:
            c.patterns, c.columns_read, c.calls_with_columns = patterns, columns_read, calls
            self._sink, self._filtering = sink, filtering

    def function_item(self, node_type: str, body: Node, scope: Scope, lateral: list[Rte]) -> Rte:
        # Functions in FROM are implicitly LATERAL; their result may carry anything of their
        # arguments, so every column of it has the arguments' lineage.
        sources = frozenset(self.sunk(body, Scope(scope.parent, list(lateral), scope.ctes)))
        if sources:
            # Its rows are parts of the columns it is given (string_to_table(name, 'mith'):
            # one row more per match), so what the statement does with them searches those.
            self.add_searches(set(sources), "~", None, False)
        alias = body.get("alias")
        names = _alias_names(alias)
        refname = alias["aliasname"] if alias else None
        if node_type == "RangeFunction":
            definitions = list(body.get("coldeflist") or ())
            for function in body.get("functions") or ():
                call, *rest = function["List"].get("items") or [{}]
                definitions += _items(rest[0]) if rest else []
                if refname is None and "FuncCall" in call:
                    refname = call["FuncCall"]["funcname"][-1]["String"]["sval"]
            for definition in definitions:
                column = definition.get("ColumnDef")
                if column is not None:
                    names.append(column["colname"])
                    # Its values are made of that type: a domain's checks run on them.
                    type_names = strings((column.get("typeName") or {}).get("names") or ())
                    if type_names:
                        self.cast_to(".".join(type_names))
        else:
            for column in body.get("columns") or ():
                _, definition = only(column)
                name = definition.get("colname") or definition.get("name")
                if name:
                    names.append(name)
        columns = [Col(name, sources, opaque=True) for name in names]
        columns.append(Col(None, sources, opaque=True))
        return Rte(refname, columns)

    def join(self, body: Node, scope: Scope, lateral: list[Rte]) -> list[Rte]:
        left = self.from_item(body["larg"], scope, lateral)
        right = self.from_item(body["rarg"], scope, [*lateral, *left])
        both = [*left, *right]
        quals = body.get("quals")
        if quals is not None:
            self.condition(quals, Scope(scope.parent, both, scope.ctes))
        merged: list[Col] = []
        using = strings(body.get("usingClause") or ())
        if body.get("isNatural") or using:
            # Joined on equal values: a column computed from others (a subquery's, a
            # function's) compared so is a search of those, as in a WHERE.
            natural = bool(body.get("isNatural"))
            for rte in both:
                for column in rte.columns:
                    joined = natural or column.name in using or column.name is None
                    if joined and column.opaque and column.sources and rte.relation is None:
                        self.add_searches(set(column.sources), "~", None, False)
        for name in using:
            sources: set[Source] = set()
            for side in (left, right):
                sources |= resolve_name(Scope(None, side), name)
            self._use(sources)
            self._c.compared.update(sources)
            merged.append(Col(name, frozenset(sources)))
        if body.get("isNatural"):
            # The common columns are compared: we cannot tell which, so all of them are read.
            for rte in both:
                rte.touched += 1
                self._use(rte.whole_row())
                self._c.compared.update(rte.whole_row())
        merges = bool(merged) or bool(body.get("isNatural"))
        if merges:
            for rte in both:
                rte.merged = True
        alias = body.get("alias")
        if alias:
            # What the join's `*` lists: not the sides a nested USING join hides, nor the
            # name of its merged columns (`USING (id) AS u`).
            columns = [column for rte in both if rte.expands for column in rte.columns]
            if merges:
                columns = unexpandable(_merged_order(columns, merged, using, natural=not using))
            return [Rte(alias["aliasname"], renamed(columns, _alias_names(alias)))]
        using_alias = body.get("join_using_alias")
        if using_alias:
            both.append(Rte(using_alias["aliasname"], merged, expands=False))
        if merges:
            # `*` lists the join's columns in PostgreSQL's order (the merged ones once,
            # first): an item of its own, the sides still there for their names alone.
            columns = [column for rte in both if rte.expands for column in rte.columns]
            for rte in both:
                rte.expands = False
            ordered = _merged_order(columns, merged, using, natural=not using)
            both.append(Rte(None, unexpandable(ordered)))
        return both

    # -- writes ----------------------------------------------------------------------------

    def _target(self, range_var: Node) -> tuple[str, Rte]:
        relation = self._c.resolver.range_var(range_var)
        alias = range_var.get("alias")
        refname = alias["aliasname"] if alias else range_var["relname"]
        aliased = alias is not None
        definition = self._c.views.get(relation)
        if definition is not None:
            columns = self.view_columns(definition)
            return relation, Rte(refname, columns, aliased=aliased, view=relation)
        return relation, Rte(refname, base_columns(relation), relation, aliased=aliased)

    def write(self, relation: str, target: Rte, columns: Collection[str] = ()) -> None:
        """The statement writes these columns of its target (none named: whole rows).
        Through a view, it writes the base columns the view's columns come from."""
        self._c.write(relation, columns)
        if target.view is None:
            return
        every = not columns or ALL_COLUMNS in columns
        for column in target.columns:
            if every or column.name in columns:
                for base, name in column.sources:
                    self._c.write(base, (name,) if columns else ())

    def copy_named(self, relation: str, columns: Sequence[Col]) -> None:
        """A new relation made of the columns (CREATE TABLE AS, SELECT INTO, a view): each
        stores its values under its own name."""
        for column in columns:
            name = column.name
            if name is None or name == UNCERTAIN or column.guessed:
                name = ALL_COLUMNS
            self._c.copy(relation, name, column.sources)

    def copy_in_order(
        self, relation: str, target: Rte, names: Sequence[str], columns: Sequence[Col]
    ) -> None:
        """Rows of these columns stored in order in the target's columns `names` (none
        given: the table's own columns, which the analysis does not know)."""
        for position, column in enumerate(columns):
            if column.name is None:
                # Of unknown width: its values, and those after it, may land in any column
                # from here on.
                rest: set[Source] = set()
                for later in columns[position:]:
                    rest |= later.sources
                for name in names[position:] or (ALL_COLUMNS,):
                    self.stored(relation, target, name, rest)
                return
            name = names[position] if position < len(names) else ALL_COLUMNS
            self.stored(relation, target, name, column.sources)

    def stored(self, relation: str, target: Rte, column: str, sources: Iterable[Source]) -> None:
        """Values stored in a column of a write's target: through a view, in the base
        columns that column comes from."""
        if target.view is not None:
            if column == ALL_COLUMNS:
                bases = target.whole_row()
            else:
                found = target.lookup(column)
                bases = found[1] if found is not None else set()
            if bases:
                for base, name in sorted(bases):
                    self._c.copy(base, name, sources)
                return
        self._c.copy(relation, column, sources)

    def insert(self, body: Node, outer: Scope | None) -> list[Col]:
        scope = Scope(outer)
        if "withClause" in body:
            self.with_clause(body["withClause"], scope)
        self._c.kinds.add(K.INSERT)
        relation, target = self._target(body["relation"])
        columns = [item["ResTarget"]["name"] for item in body.get("cols") or ()]
        self.write(relation, target, columns or (ALL_COLUMNS,))
        source = body.get("selectStmt")
        proposed: set[Source] = set()
        if source is not None:
            values = self.query(source, scope)
            self.copy_in_order(relation, target, columns, values)
            for value in values:
                proposed |= value.sources
        conflict = body.get("onConflictClause")
        if conflict is not None:
            # The proposed row, whose values ON CONFLICT DO UPDATE may store elsewhere in it.
            excluded = Rte(
                "excluded",
                [Col(None, frozenset(proposed), opaque=True)] if proposed else [],
                expands=False,
            )
            conflict_scope = Scope(scope, [target, excluded])
            infer = conflict.get("infer") or {}
            for element in infer.get("indexElems") or ():
                index = element["IndexElem"]
                if "name" in index:
                    self._use(resolve_name(conflict_scope, index["name"]))
                self.expr(index.get("expr"), conflict_scope)
            self.condition(infer.get("whereClause"), conflict_scope)
            if conflict.get("action") == "ONCONFLICT_UPDATE":
                self._c.kinds.add(K.UPDATE)
                self.set_targets(conflict.get("targetList") or (), relation, target, conflict_scope)
                self.condition(conflict.get("whereClause"), conflict_scope)
        return self.returning(body.get("returningClause"), Scope(scope, [target]), target)

    def update(self, body: Node, outer: Scope | None) -> list[Col]:
        scope = Scope(outer)
        if "withClause" in body:
            self.with_clause(body["withClause"], scope)
        self._c.kinds.add(K.UPDATE)
        relation, target = self._target(body["relation"])
        if relation == "pg_catalog.pg_settings":
            self._c.dynamic = True  # its update rule calls set_config: any setting may change
        scope.rtes.append(target)
        from_clause = body.get("fromClause")
        if from_clause:
            self.from_clause(from_clause, scope)
        self.set_targets(body.get("targetList") or (), relation, target, scope)
        self.where(body.get("whereClause"), scope, target)
        return self.returning(body.get("returningClause"), scope, target)

    def delete(self, body: Node, outer: Scope | None) -> list[Col]:
        scope = Scope(outer)
        if "withClause" in body:
            self.with_clause(body["withClause"], scope)
        self._c.kinds.add(K.DELETE)
        relation, target = self._target(body["relation"])
        self.write(relation, target)
        scope.rtes.append(target)
        using = body.get("usingClause")
        if using:
            self.from_clause(using, scope)
        self.where(body.get("whereClause"), scope, target)
        return self.returning(body.get("returningClause"), scope, target)

    def merge(self, body: Node, outer: Scope | None) -> list[Col]:
        scope = Scope(outer)
        if "withClause" in body:
            self.with_clause(body["withClause"], scope)
        self._c.kinds.add(K.MERGE)
        relation, target = self._target(body["relation"])
        self.write(relation, target)
        scope.rtes.append(target)
        scope.rtes.extend(self.from_item(body["sourceRelation"], scope, []))
        join = body.get("joinCondition")
        matches_all = join is None or self.chosen_by(join, scope, target)
        for item in body.get("mergeWhenClauses") or ():
            when = item["MergeWhenClause"]
            condition = when.get("condition")
            if condition is not None:
                self.condition(condition, scope)
            command = when.get("commandType")
            if command == "CMD_UPDATE":
                self._c.kinds.add(K.UPDATE)
                self.set_targets(when.get("targetList") or (), relation, target, scope)
            elif command == "CMD_INSERT":
                self._c.kinds.add(K.INSERT)
                names = [t["ResTarget"]["name"] for t in when.get("targetList") or ()]
                self.write(relation, target, names or (ALL_COLUMNS,))
                values = [
                    Col(None if _expands(value) else UNCERTAIN, frozenset(self.sunk(value, scope)))
                    for value in when.get("values") or ()
                ]
                self.copy_in_order(relation, target, names, values)
            elif command == "CMD_DELETE":
                self._c.kinds.add(K.DELETE)
            if command in ("CMD_UPDATE", "CMD_DELETE") and condition is None:
                by_source = when.get("matchKind") == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE"
                if by_source or matches_all:
                    self._c.without_where = True
        return self.returning(body.get("returningClause"), scope, target)

    def set_targets(self, items: Iterable[Node], relation: str, written: Rte, scope: Scope) -> None:
        names: list[str] = []
        assigned: set[Source] = set()  # what (a, b) = (...) assigns to each of a and b
        for item in items:
            target = item["ResTarget"]
            names.append(target["name"])
            # A subscript picks where the value goes (SET a[ascii(name)] = 1): stored too.
            sources = self.sunk(target.get("indirection"), scope)
            value = target.get("val")
            multi = value.get("MultiAssignRef") if value is not None else None
            if multi is not None:
                # (a, b) = (SELECT ...) repeats the source for every column: walk it once.
                if multi.get("colno", 1) == 1:
                    assigned = self.sunk(multi.get("source"), scope)
                sources |= assigned
            else:
                sources |= self.sunk(value, scope)
            self.stored(relation, written, target["name"], sources)
        self.write(relation, written, names)

    def where(self, where: Node | None, scope: Scope, target: Rte) -> None:
        if where is None or self.chosen_by(where, scope, target):
            self._c.without_where = True

    def chosen_by(self, node: Node, scope: Scope, target: Rte) -> bool:
        """A write's filter (WHERE, MERGE's ON): walked and judged as a query's filter;
        whether it may hold for every row of the target."""
        outer = self._filtering
        self._filtering = True
        matches_all = self.may_match_all(node, scope, target)
        self._filtering = outer
        self.judge_tests(node, scope)
        return matches_all

    def may_match_all(self, node: Node, scope: Scope, target: Rte) -> bool:
        """Walk a condition; say whether it may hold for every row of the target.

        A condition that never reads the target's columns (`true`, `1 = 1`, `$1`, EXISTS of
        another table) is all or nothing; so is an OR with such a branch.
        """
        bool_expr = node.get("BoolExpr")
        if bool_expr is not None and bool_expr.get("boolop") in ("AND_EXPR", "OR_EXPR"):
            verdicts = [self.may_match_all(arg, scope, target) for arg in bool_expr["args"]]
            constant = literals.truth(node)
            if constant is not None:
                return constant
            return any(verdicts) if bool_expr["boolop"] == "OR_EXPR" else all(verdicts)
        if "CurrentOfExpr" in node:
            return False
        before = target.touched
        self.expr(node, scope)
        constant = literals.truth(node)
        if constant is not None:
            return constant
        return target.touched == before

    def returning(self, clause: Node | None, scope: Scope, target: Rte) -> list[Col]:
        if clause is None:
            return []
        names = {"RETURNING_OPTION_OLD": "old", "RETURNING_OPTION_NEW": "new"}
        for option in clause.get("options") or ():
            spec = option["ReturningOption"]
            names[spec.get("option", "RETURNING_OPTION_OLD")] = spec.get("value", "")
        aliases = [
            Rte(name, target.columns, target.relation, aliased=True, expands=False)
            for name in names.values()
        ]
        returning_scope = Scope(scope.parent, [*scope.rtes, *aliases], scope.ctes)
        return self.target_list(clause.get("exprs") or (), returning_scope, True)

    # -- expressions -----------------------------------------------------------------------

    def condition(self, node: Any, scope: Scope | None) -> None:
        """A filter: patterns met through AND and OR alone select the rows they match."""
        outer = self._filtering
        self._filtering = True
        self.expr(node, scope)
        self._filtering = outer
        self.judge_tests(node, scope)

    def judge_tests(self, node: Any, scope: Scope | None) -> None:
        """A filter's tests that are not plain comparisons of columns search them."""
        for test in _tests(node):
            if not _plain_test(test) or _uses_computed_column(test, scope):
                self.unclear_search(test, scope)

    def unclear_search(self, node: Any, scope: Scope | None) -> None:
        """A test of a column that is not a plain comparison of it (a value computed from it
        by arithmetic, a subscript, CASE, COALESCE, a function): what it finds of the column
        is not known, so it counts as a search of it (fail closed)."""
        columns: set[Source] = set()
        # A subquery's references too: those to the outer query are what it tests.
        for fields in _column_refs(node, into_subqueries=True):
            columns |= self.column_sources(fields, scope)
        if columns:
            self.add_searches(columns, "~", None, False)

    def expr(self, node: Any, scope: Scope | None) -> None:
        budget.spend()
        if type(node) is list:
            for item in node:
                self.expr(item, scope)
            return
        if type(node) is not dict:
            return
        filtering = self._filtering
        for key, value in node.items():
            if filtering and not (
                key in _FILTER_KEYS
                or (key == "BoolExpr" and value.get("boolop") in _FILTER_BOOLOPS)
            ):
                self._filtering = False
            handler = _HANDLERS.get(key)
            if handler is not None:
                handler(self, value, scope)
            elif type(value) is dict or type(value) is list:
                self.expr(value, scope)
            self._filtering = filtering

    def sunk(self, node: Any, scope: Scope | None) -> set[Source]:
        """Walk an expression; return the lineage of its value."""
        outer = self._sink
        sink: set[Source] = set()
        self._sink = sink
        self.expr(node, scope)
        self._sink = outer
        return sink

    def traced(self, node: Any, scope: Scope | None) -> set[Source]:
        """Walk a part of the expression being walked: its lineage, which the whole's value
        carries too."""
        sources = self.sunk(node, scope)
        if self._sink is not None:
            self._sink |= sources
        return sources

    def _use(self, sources: Iterable[Source]) -> None:
        self._c.read(sources)
        if self._sink is not None:
            self._sink.update(sources)

    def column_ref(self, body: Node, scope: Scope | None) -> None:
        self._use(self.column_sources(body["fields"], scope))

    def column_sources(self, fields: Sequence[Node], scope: Scope | None) -> set[Source]:
        """What a column reference (its name parts) reads."""
        # The common cases first, without building name lists: `name` and `q.name`.
        first = fields[0].get("String")
        if first is not None:
            if len(fields) == 1:
                return resolve_name(scope, first["sval"])
            second = fields[1].get("String")
            if len(fields) == 2 and second is not None:
                name = second["sval"]
                found = resolve_qualified(scope, first["sval"], name)
                if name in ROW_FUNCTIONS or _no_such_column(scope, first["sval"], name):
                    self.field_call(name, found)  # field notation: name(q)
                else:
                    self.named_on_table(scope, first["sval"], name)
                return found
        if "A_Star" in fields[-1]:
            qualifier = strings(fields[:-1])
            if qualifier:
                rte = self.qualified_rte(qualifier, scope)
                if rte is None:
                    return set()
                rte.touched += 1
                return rte.whole_row()
            sources: set[Source] = set()
            for rte in scope.rtes if scope is not None else ():
                rte.touched += 1
                sources |= rte.whole_row()
            return sources
        names = strings(fields)
        # schema.table.column (catalog.schema.table.column), else table.composite.field,
        # where the field may be a function of the composite value: `t.c.lo_unlink`.
        schema, table, column = names[-3:]
        relation = self._c.resolver.name(schema, table)
        sources = resolve_schema_qualified(scope, schema, table, column, relation)
        if len(names) > 3:
            sources |= resolve_qualified(scope, names[0], names[1])
        self.field_call(column, sources)
        return sources

    def named_on_table(self, scope: Scope | None, qualifier: str, name: str) -> None:
        """`q.name` over a base table, whose columns the walk does not know: where the table
        has no such column, it is the call name(q). The catalog says (field_names)."""
        rte = scope.find_rte(qualifier) if scope is not None else None
        if rte is not None and rte.plain_relation is not None:
            self._c.field_names.add((rte.plain_relation, name))

    def scanned(self, source: str) -> None:
        """A FROM item reads the relation (or CTE): read twice in one statement (a self-join,
        two subqueries), one row of the result can hold several of its rows, and a LIMIT
        no longer bounds how many of them come back."""
        scans = self._scans
        if source in scans:
            self._c.collects_rows = True
        scans.add(source)

    def called(self, name: str) -> None:
        """What calling the function `name` (bare, lower-case) does, however it is written."""
        c = self._c
        if name in COLLECTING_AGGREGATES or name in SELECTING_AGGREGATES:
            c.collects_rows = True
        if name in SQL_TEXT_FUNCTIONS:
            c.dynamic = True
        statement = FUNCTION_STATEMENTS.get(name)
        if statement is not None:
            kind, destination = statement
            c.kinds.add(K(kind))
            if destination is not None:
                c.copy_destination = destination

    def field_call(self, name: str, given: set[Source] | None = None) -> None:
        """`x.name` or `(x).name` where it may be the call name(x) (field notation); `given`:
        what x reads, when known."""
        self._c.functions.add(name)
        self.called(name)
        if name == "set_config":
            self._c.kinds.add(K.SET)
            self._c.dynamic = True  # which setting is not known
        if given and name in SET_RETURNING_FUNCTIONS:
            # (array_fill(1, ARRAY[f(name)])).unnest: no row where f is 0, as unnest(...).
            self.add_searches(given, "~", None, False)
        elif given:
            self.may_return_rows(name, given)

    def may_return_rows(self, name: str, given: set[Source]) -> None:
        """A call of a function the analysis does not know (or of a user-defined operator's
        function), given these columns: computing a result column, where a set-returning
        function may stand, whether it is one the catalog says (calls_with_columns)."""
        if self._sink is not None:
            self._c.calls_with_columns[(name, frozenset(given))] = None

    def func_call(self, body: Node, scope: Scope | None) -> None:
        selects = self._filtering  # a search function met in a filter selects its rows
        self._filtering = False
        parts = strings(body["funcname"])
        self._c.functions.add(function_name(body["funcname"]))
        name = parts[-1] if parts else ""
        self.called(name)
        searched = PATTERN_FUNCTIONS.get(name)
        if searched is not None:
            operator, negated = searched
            args: Sequence[Node] = body.get("args") or ()
            if not (selects and args and _searches_a_column(args[0])):
                negated = True  # its result may be turned around, or the value is computed
            if self.search_call(body, scope, name, operator, negated):
                return
        if name == "set_config" and parts[:-1] in ([], ["pg_catalog"]):
            self.set_config(body.get("args") or (), body)
        if (
            name in SET_RETURNING_FUNCTIONS
            or name in STATE_SETTING_FUNCTIONS
            or (selects and searched is None)
        ):
            # What it tests of a column is not known: a function that is itself the filter
            # (jsonb_path_exists, xmlexists), one whose rows depend on its arguments
            # (generate_series(1, f(name)) returns none where f is 0), or one whose
            # argument a later row reads back (setseed). A search of them.
            columns = self.traced(body.get("args") or [], scope)
            if columns:
                self.add_searches(columns, "~", None, False)
        elif self._sink is not None:
            given = self.traced(body.get("args") or [], scope)
            if given:
                self.may_return_rows(function_name(body["funcname"]), given)
        else:
            self.expr(body.get("args"), scope)
        self.expr(body.get("agg_order"), scope)
        agg_filter = body.get("agg_filter")
        over = body.get("over")
        if agg_filter or over:
            # A FILTER picks which rows an aggregate reads, and a window brings other rows'
            # values into each: min() FILTER (WHERE id % 50 = k) and max() OVER (ROWS
            # BETWEEN k FOLLOWING AND k FOLLOWING) put fifty customers in one row.
            self._c.collects_rows = True
        if agg_filter:
            self.condition(agg_filter, scope)
        if over:
            self.window(over, scope)

    def search_call(
        self, body: Node, scope: Scope | None, name: str, operator: str, negated: bool
    ) -> bool:
        """A function that searches its first argument's values for its second (strpos,
        regexp_like, textlike, starts_with...): a pattern match, as the operator would be.
        False when it is not one after all (substring by position)."""
        args: Sequence[Node] = body.get("args") or ()
        if len(args) < 2:
            return False
        if name == "substring":
            if literals.string(args[1]) is None and "A_Const" in args[1]:
                return False  # substring(text, start, count)
            if len(args) == 3 and literals.string(args[2]) is not None:
                operator = "similar"  # substring(text SIMILAR pattern ESCAPE escape)
        searched = self.traced(args[0], scope)
        patterns = self.traced(list(args[1:]), scope)
        self.add_searches(searched, operator, literals.pattern(args[1]), negated)
        self.add_searches(patterns - searched, operator, None, negated)
        return True

    def add_searches(
        self,
        columns: set[Source],
        operator: str,
        pattern: str | ParameterRef | None,
        negated: bool,
    ) -> None:
        """Pattern matches on the columns, as the facts name the operator."""
        for relation, column in sorted(columns):
            self._c.patterns[PatternMatch(relation, column, operator, pattern, negated)] = None

    def set_config(self, args: Sequence[Node], call: Node) -> None:
        self._c.kinds.add(K.SET)
        setting = literals.string(args[0]) if args else None
        if setting is None:
            self._c.dynamic = True  # which setting changes is decided at run time
            return
        setting = setting.strip().lower()
        if setting in ROLE_SETTINGS:
            self._c.sets_role = True
        elif setting == "search_path":
            value = literals.string(args[1]) if len(args) > 1 else None
            path = split_identifier_list(value) if value is not None else None
            local = literals.boolean(args[2]) if len(args) > 2 else None
            self._c.search_path_calls.append(SearchPathCall(call, path, local))

    def null_test(self, body: Node, scope: Scope | None) -> None:
        """`f(column) IS [NOT] NULL` tests a value computed from a column (array_position of
        a name in its words): a search, as comparing it would be."""
        self._filtering = False
        argument = body.get("arg")
        columns = self.traced(argument, scope)
        if columns and not _plain_side(argument, scope):
            self.add_searches(columns, "~", None, False)

    def cast_to(self, type_name: str) -> None:
        self._c.cast_types.add(type_name)

    def collects(self) -> None:
        self._c.collects_rows = True

    def indirection(self, body: Node, scope: Scope | None) -> None:
        """`(expr).name` selects a field, or calls name(expr) (field notation): any name may
        be a function, so each counts as one."""
        given = self.traced(body.get("arg"), scope)
        for step in body.get("indirection") or ():
            field = step.get("String")
            if field is not None:
                self.field_call(field["sval"], given)
            else:
                self.expr(step, scope)

    def sublink(self, body: Node, scope: Scope | None) -> None:
        link_type = body.get("subLinkType")
        operator_name = body.get("operName")
        operator = operator_name[-1]["String"]["sval"] if operator_name else ""
        if operator in PATTERN_OPERATORS:
            # email LIKE ANY (SELECT pattern FROM ...): a match against computed patterns
            tested = self.traced(body.get("testexpr"), scope)
            self.add_patterns(tested, operator, None)
        else:
            self.expr(body.get("testexpr"), scope)
        if link_type == "ARRAY_SUBLINK":
            self._c.collects_rows = True
        outer = self._sink
        self._sink = None
        # EXISTS ignores its SELECT list, so `EXISTS (SELECT * ...)` reads no column.
        columns = self.query(body["subselect"], scope, record_star=link_type != "EXISTS_SUBLINK")
        self._sink = outer
        if link_type in ("ANY_SUBLINK", "ALL_SUBLINK"):
            # Compared with values computed from columns (c.id IN (SELECT k FROM (SELECT
            # c.id * f(c.name) AS k) s)), however deep the computing: a search of them.
            for column in columns:
                if column.opaque and column.sources:
                    self.add_searches(set(column.sources), "~", None, False)
                self._c.compared.update(column.sources)
        if outer is not None and link_type in _SOURCE_SUBLINKS:
            for column in columns:
                outer |= column.sources

    def a_expr(self, body: Node, scope: Scope | None) -> None:
        kind = body.get("kind")
        name = body.get("name")
        operator = name[-1]["String"]["sval"] if name else ""
        if name:
            self._c.operators.add(".".join(strings(name)))
        if operator in PATTERN_OPERATORS and kind in PATTERN_EXPR_KINDS:
            self.pattern_match(body, scope, kind == "AEXPR_SIMILAR", operator)
            return
        self._filtering = False
        if name and kind not in _TESTING_KINDS and _someones_operator(name, body, scope):
            # Someone's operator (a name the database's own do not have), or one given a
            # whole row (whose `=` may be someone's, found through the search path): what
            # it tests of its operands is its function's business, a search of them.
            given = self.traced(body.get("lexpr"), scope) | self.traced(body.get("rexpr"), scope)
            if given:
                self.add_searches(given, "~", None, False)
                self.may_return_rows(".".join(strings(name)), given)
            return
        if kind in _COMPARING_KINDS and (kind != "AEXPR_OP" or operator in _SEARCHING_COMPARISONS):
            left = self.traced(body.get("lexpr"), scope)
            right = self.traced(body.get("rexpr"), scope)
            # A value computed from a column (right(name, 5), replace(name, 'mith', ''),
            # name || '', to_tsvector(name)) compared with anything finds rows by a part of
            # the value, and a containment or match (@@, @>, &&) tests a part of even a
            # column as it is: a search, wherever it is met.
            contains = operator not in _PLAIN_COMPARISONS and kind == "AEXPR_OP"
            for side, columns in ((body.get("lexpr"), left), (body.get("rexpr"), right)):
                if columns and (contains or not _plain_side(side, scope)):
                    self.add_searches(columns, "~", None, False)
            # Compared, even with a literal (a thousand ORed literals are a thousand
            # guesses): the rows that match carry the column's value in any other column
            # (StatementFacts.compared).
            self._c.compared.update(left | right)
            return
        if kind in _TESTING_KINDS:
            # NULLIF(a, b) is NULL where they are equal, BETWEEN tests bounds: each side is
            # compared with the other (StatementFacts.compared).
            self._c.compared.update(
                self.traced(body.get("lexpr"), scope) | self.traced(body.get("rexpr"), scope)
            )
            return
        if name and self._sink is not None:
            # An operator runs its function, which may be a user-defined set-returning one.
            given = self.traced(body.get("lexpr"), scope) | self.traced(body.get("rexpr"), scope)
            if given:
                self.may_return_rows(".".join(strings(name)), given)
            return
        self.expr(body.get("lexpr"), scope)
        self.expr(body.get("rexpr"), scope)

    def pattern_match(self, body: Node, scope: Scope | None, similar: bool, operator: str) -> None:
        selects = self._filtering and _searches_a_column(body.get("lexpr"))
        self._filtering = False
        left = self.traced(body.get("lexpr"), scope)
        right = self.traced(body.get("rexpr"), scope)
        quantified = body.get("kind") in ("AEXPR_OP_ANY", "AEXPR_OP_ALL")
        pattern = None if quantified else literals.pattern(body.get("rexpr"))
        self.add_patterns(left, operator, pattern, similar=similar, turned=not selects)
        # A column on the pattern side is matched against too; its pattern is an expression.
        self.add_patterns(right - left, operator, None, similar=similar, turned=not selects)

    def add_patterns(
        self,
        columns: set[Source],
        operator: str,
        pattern: str | ParameterRef | None,
        *,
        similar: bool = False,
        turned: bool = False,
    ) -> None:
        """`turned`: the match's result may be turned around (it is not met in a filter
        through AND and OR alone), or it matches a value computed from the column."""
        fact_operator, negated = PATTERN_OPERATORS[operator]
        operator_name = "similar" if similar else fact_operator
        self.add_searches(columns, operator_name, pattern, negated or turned)

    def stray_relation(self, body: Node, scope: Scope | None) -> None:
        # A relation where the walk expects none: it is read, every column of it.
        relation = self._c.resolver.range_var(body)
        self._use({(relation, ALL_COLUMNS)})
        self._c.dynamic = True


_FILTER_KEYS = frozenset({"A_Expr", "FuncCall", "args"})
_FILTER_BOOLOPS = frozenset({"AND_EXPR", "OR_EXPR"})
# Comparisons that find rows by a value: with a value computed from a column on one side,
# they search a part of it.
_SEARCHING_COMPARISONS = frozenset(
    {"=", "<>", "!=", "<", ">", "<=", ">=", "@@", "@@@", "@>", "<@", "&&", "@?"}
)
_TESTING_KINDS = frozenset(
    {
        "AEXPR_NULLIF",
        "AEXPR_BETWEEN",
        "AEXPR_NOT_BETWEEN",
        "AEXPR_BETWEEN_SYM",
        "AEXPR_NOT_BETWEEN_SYM",
    }
)
_COMPARING_KINDS = frozenset(
    {"AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_OP_ALL", "AEXPR_IN", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT"}
)
# Functions that keep a value whole (case, blanks): a prefix search of their result is one
# of the column's.
_WHOLE_VALUE_FUNCTIONS = frozenset({"lower", "upper", "btrim", "trim", "casefold"})


def _searches_a_column(node: Node | None) -> bool:
    """Whether the searched side is a column itself (maybe cased or cast), not a value
    computed from it (reverse(name), substr(name, 6)): a prefix of it is a prefix of the
    column's."""
    while node is not None:
        if "ColumnRef" in node:
            return True
        cast = node.get("TypeCast")
        if cast is not None:
            node = cast.get("arg")
            continue
        call = node.get("FuncCall")
        if call is None:
            return False
        args: Sequence[Node] = call.get("args") or ()
        if strings(call["funcname"])[-1] not in _WHOLE_VALUE_FUNCTIONS or len(args) != 1:
            return False
        node = args[0]
    return False


def _computed_column(scope: Scope | None, fields: Sequence[Node]) -> bool:
    """Whether a column reference names a value computed from columns: a subquery's or CTE's
    computed column, or a function's result in FROM (`string_to_table(name, ' ') w`).
    Compared as it is, it still tests a part of the columns it comes from."""
    names = strings(fields)
    if not names or len(names) != len(fields) or scope is None:
        return False  # `*`, or a subscript: judged elsewhere
    if len(names) >= 3:
        # schema.table.column: the item is the unaliased relation, which need not be the
        # nearest item of that name (an inner alias may share it): any of them.
        level: Scope | None = scope
        while level is not None:
            if any(rte.refname == names[-2] and _computed_in(rte, names[-1]) for rte in level.rtes):
                return True
            level = level.parent
        return False
    if len(names) == 2:
        rte = scope.find_rte(names[0])
        return rte is not None and _computed_in(rte, names[1])
    # As the name resolves (scope.resolve_name): every item of the innermost level that may
    # have the column, the next level out while none surely has it.
    name = names[0]
    level = scope
    while level is not None:
        definite = False
        for rte in level.rtes:
            hit = rte.lookup(name)
            if hit is not None:
                if _computed_in(rte, name):
                    return True
                definite = definite or hit[0]
        if definite:
            return False
        level = level.parent
    # No column has the name: a FROM item's whole row (a subquery's, a function's result),
    # a record holding its columns, computed where any of them is.
    named = scope.find_rte(name)
    return (
        named is not None
        and named.relation is None
        and any(column.opaque and column.sources for column in named.columns)
    )


def _uses_computed_column(node: Any, scope: Scope | None) -> bool:
    return any(_computed_column(scope, fields) for fields in _column_refs(node))


def _plain_side(node: Any, scope: Scope | None) -> bool:
    """A column as it is or a value computed from no column (see `_plain_operand`), that
    names no column a subquery or function computed."""
    return _plain_operand(node) and not _uses_computed_column(node, scope)


def _someones_operator(name: Sequence[Node], body: Node, scope: Scope | None) -> bool:
    """Whether an operator may be someone's (not the database's own): a name the database's
    operators do not have, one qualified by another schema, or one given a whole row."""
    names = strings(name)
    if names[-1] not in BUILTIN_OPERATORS or (len(names) > 1 and names[0] != "pg_catalog"):
        return True
    sides = [body.get("lexpr"), body.get("rexpr"), *_items(body.get("rexpr"))]
    return any(_whole_row(side, scope) for side in sides)


def _whole_row(node: Any, scope: Scope | None) -> bool:
    """Whether the node names a whole row: `q.*`, or a FROM item's bare name (PostgreSQL
    takes it for a column first, which this cannot tell for a table: taken as a row)."""
    ref = node.get("ColumnRef") if type(node) is dict else None
    if ref is None:
        return False
    fields = ref["fields"]
    if "A_Star" in fields[-1]:
        return True
    names = strings(fields)
    return (
        len(fields) == 1
        and len(names) == 1
        and scope is not None
        and scope.find_rte(names[0]) is not None
    )


def _computed_in(rte: Rte, name: str | None) -> bool:
    if rte.relation is not None:
        return False
    # A column whose name the walk does not know, or guessed, may be the one named.
    exact = name is not None and any(
        column.name == name and not column.guessed for column in rte.columns
    )
    return any(
        column.opaque
        and column.sources
        and (column.name in (name, None) or (not exact and _maybe_named(column)))
        for column in rte.columns
    )


def _maybe_named(column: Col) -> bool:
    return column.guessed or column.name == UNCERTAIN


def _sort_output(key: Any, columns: Sequence[Col]) -> Col | None:
    """The output column an ORDER BY key names by its number or alias, if it does."""
    if type(key) is not dict:
        return None
    number = literals.constant(key) if "A_Const" in key else None
    if type(number) is int:
        return columns[number - 1] if 0 < number <= len(columns) else None
    ref = key.get("ColumnRef")
    if ref is not None and len(ref["fields"]) == 1 and "String" in ref["fields"][0]:
        name = ref["fields"][0]["String"]["sval"]
        named = [column for column in columns if column.name == name]
        return named[0] if len(named) == 1 and named[0].opaque else None
    return None


def _tests(node: Any) -> list[Any]:
    """The tests a filter combines with AND, OR and NOT."""
    if type(node) is list:
        return [test for item in node for test in _tests(item)]
    if type(node) is dict and "BoolExpr" in node:
        return _tests(node["BoolExpr"].get("args") or [])
    return [node]


_PLAIN_COMPARISONS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_PLAIN_KINDS = frozenset(
    {
        "AEXPR_OP",
        "AEXPR_IN",
        "AEXPR_OP_ANY",
        "AEXPR_OP_ALL",
        "AEXPR_DISTINCT",
        "AEXPR_NOT_DISTINCT",
        "AEXPR_BETWEEN",
        "AEXPR_NOT_BETWEEN",
    }
)


def _plain_test(node: Any) -> bool:
    """Whether a test compares columns as they are (or constants): `id = 5`, `a.x = b.y`,
    `created_at > now() - interval '1 day'`, `c IS NULL`, `x IN (SELECT ...)`. Pattern
    matches are judged by their own rules."""
    if type(node) is not dict:
        return True
    expression = node.get("A_Expr")
    if expression is not None:
        name = expression.get("name")
        operator = name[-1]["String"]["sval"] if name else ""
        kind = expression.get("kind")
        if operator in PATTERN_OPERATORS and kind in PATTERN_EXPR_KINDS:
            return True
        if kind not in _PLAIN_KINDS:
            return False
        if not kind.endswith("BETWEEN") and operator not in _PLAIN_COMPARISONS:
            return False
        return _plain_operand(expression.get("lexpr")) and _plain_operand(expression.get("rexpr"))
    call = node.get("FuncCall")
    if call is not None:
        return strings(call["funcname"])[-1] in PATTERN_FUNCTIONS
    for key in ("NullTest", "BooleanTest"):
        test = node.get(key)
        if test is not None:
            return _plain_operand(test.get("arg"))
    sublink = node.get("SubLink")
    if sublink is not None:
        if sublink.get("subLinkType") in ("EXPR_SUBLINK", "ARRAY_SUBLINK"):
            # The subquery's value is the test (WHERE (SELECT f(c.name))): plain only when it
            # reads no column, of the outer query or its own.
            return _plain_operand(node)
        return _plain_operand(sublink.get("testexpr")) and _plain_results(sublink)
    return "ColumnRef" in node or "A_Const" in node or "ParamRef" in node


def _plain_results(sublink: Node) -> bool:
    """Whether what an IN / ANY / ALL subquery compares with are columns as they are or
    constants: `x IN (SELECT f(c.name))` tests a value computed from the outer row."""
    if sublink.get("subLinkType") not in ("ANY_SUBLINK", "ALL_SUBLINK"):
        return True  # EXISTS: its own WHERE is judged where it is walked
    select = (sublink.get("subselect") or {}).get("SelectStmt") or {}
    values = [
        item for row in select.get("valuesLists") or () for item in row["List"].get("items") or ()
    ]
    targets = [target["ResTarget"].get("val") for target in select.get("targetList") or ()]
    return all(_plain_operand(value) for value in (*values, *targets))


def _plain_operand(node: Any) -> bool:
    """A column as it is (maybe cast, lower- or upper-cased), or a value computed from no
    column of the query (constants, parameters, now(), a subquery)."""
    if type(node) is list:
        return all(_plain_operand(item) for item in node)
    return node is None or _searches_a_column(node) or not _column_refs(node, into_subqueries=True)


def _column_refs(node: Any, into_subqueries: bool = False) -> list[Sequence[Node]]:
    """The column references of an expression, and those of its subqueries if asked (a
    subquery may test the outer query's columns: `1 < (SELECT f(c.name))`)."""
    found: list[Sequence[Node]] = []
    pending = [node]
    while pending:
        item = pending.pop()
        if type(item) is list:
            pending.extend(item)
        elif type(item) is dict:
            for key, value in item.items():
                if key == "ColumnRef":
                    found.append(value["fields"])
                elif key == "SubLink" and not into_subqueries:
                    pending.append(value.get("testexpr"))
                elif type(value) is dict or type(value) is list:
                    pending.append(value)
    return found


def _no_such_column(scope: Scope | None, qualifier: str, name: str) -> bool:
    """Whether `qualifier.name` may name no column of its FROM item: then PostgreSQL reads
    it as the call name(qualifier) (`g.lo_creat` over a function's or a subquery's alias).
    A base table's columns are not known here: a name there is taken for a column."""
    rte = scope.find_rte(qualifier) if scope is not None else None
    if rte is None or rte.plain_relation is not None:
        return False
    hit = rte.lookup(name)
    return hit is None or not hit[0]


def _expands(node: Any) -> bool:
    """Whether the expression is `(x).*`, which stands for every field of x."""
    indirection = node.get("A_Indirection") if isinstance(node, dict) else None
    steps: list[Node] = (indirection or {}).get("indirection") or []
    return bool(steps) and "A_Star" in steps[-1]


def _items(node: Any) -> list[Node]:
    return (
        list(node["List"].get("items") or ()) if isinstance(node, dict) and "List" in node else []
    )


def _skip(walker: Walker, body: Node, scope: Scope | None) -> None:
    return None


def _type_cast(walker: Walker, body: Node, scope: Scope | None) -> None:
    names = strings((body.get("typeName") or {}).get("names") or ())
    if names:
        # A user-defined type's input function, casts and domain checks run on the value,
        # and so does a user-defined cast to any type (the database's own too).
        walker.cast_to(".".join(names))
    walker.expr(body.get("arg"), scope)


def _collecting(walker: Walker, body: Node, scope: Scope | None) -> None:
    walker.collects()
    walker.expr(body, scope)


def _select(walker: Walker, body: Node, scope: Scope | None) -> None:
    walker.select(body, scope)


_HANDLERS: dict[str, Callable[[Walker, Node, Scope | None], None]] = {
    "ColumnRef": Walker.column_ref,
    "FuncCall": Walker.func_call,
    "SubLink": Walker.sublink,
    "A_Indirection": Walker.indirection,
    "JsonArrayAgg": _collecting,
    "JsonObjectAgg": _collecting,
    "A_Expr": Walker.a_expr,
    "NullTest": Walker.null_test,
    "TypeCast": _type_cast,
    "A_Const": _skip,
    "ParamRef": _skip,
    "String": _skip,
    "SelectStmt": _select,
    "WindowDef": Walker.window,
    "RangeVar": Walker.stray_relation,
}
