"""The identifiers a statement names: in its predicates, the values it writes, its parameters.

`WHERE email = 'x@y.z'`, `WHERE c.id IN (42, $1)`, `INSERT INTO crm.customers (email)
VALUES ($1)`, `UPDATE ... SET phone = '...'`: each value compared with, or written to, a
catalogued table's subject column or identifier column (email, phone, iban, national_id)
names a data subject. The data-subject index keeps its keyed pseudonym (pseudonyms.py),
never the value. A column is found by its name among the catalogued tables the statement
reads or writes, its qualifier (a table's name or alias) narrowing them; a name that fits
several is counted for each, so a subject is never missed for an ambiguous name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pglast.parser import parse_sql_json

from custos.audit.events import IdentifierType
from custos.audit.pseudonyms import IDENTIFIER_CATEGORIES
from custos.policy.catalog import PersonalDataCatalog

Node = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Named:
    """A value a statement names for an identifier column: which, of what table, the value."""

    identifier_type: IdentifierType
    relation: str
    value: str


def named_identifiers(
    text: str,
    relations: Sequence[str],
    catalog: PersonalDataCatalog,
    parameters: Sequence[str | None],
) -> list[Named]:
    """The identifiers `text` names; `relations` are the schema-qualified relations it reads
    or writes (the analysis's), `parameters` the Bind values as text ($1 first; None: NULL
    or unknown)."""
    personal = [relation for relation in relations if catalog.has_personal_data(relation)]
    if not personal:
        return []
    try:
        tree = json.loads(parse_sql_json(text))
    except Exception:  # a text PostgreSQL's parser cannot read names nothing it runs
        return []
    finder = _Finder(personal, catalog, parameters)
    for statement in tree.get("stmts", ()):
        finder.statement(statement.get("stmt", {}))
    return finder.found


class _Finder:
    def __init__(
        self,
        relations: Sequence[str],
        catalog: PersonalDataCatalog,
        parameters: Sequence[str | None],
    ) -> None:
        self._relations = relations
        self._catalog = catalog
        self._parameters = parameters
        self._aliases: dict[str, set[str]] = {}  # name or alias -> relations
        self.found: list[Named] = []

    def statement(self, node: Node) -> None:
        for range_var in _nodes_of(node, "RangeVar"):
            self._alias(range_var)
        insert = node.get("InsertStmt")
        if insert is not None:
            self._insert(insert)
        update = node.get("UpdateStmt")
        if update is not None:
            target = _qualified(update.get("relation", {}))
            for item in update.get("targetList", ()):
                result = item.get("ResTarget", {})
                self._value(result.get("val", {}), self._columns(target, result.get("name")))
        for expression in _nodes_of(node, "A_Expr"):
            self._comparison(expression)

    def _alias(self, range_var: Node) -> None:
        relations = self._matching(_qualified(range_var))
        if not relations:
            return
        names = [range_var.get("relname", "")]
        alias = range_var.get("alias", {}).get("aliasname")
        if alias:
            names.append(alias)
        for name in names:
            self._aliases.setdefault(name, set()).update(relations)

    def _matching(self, name: str) -> list[str]:
        """The statement's catalogued relations a RangeVar's (maybe unqualified) name is."""
        if "." in name:
            return [relation for relation in self._relations if relation == name]
        return [relation for relation in self._relations if relation.rpartition(".")[2] == name]

    def _insert(self, insert: Node) -> None:
        relations = self._matching(_qualified(insert.get("relation", {})))
        names = [item.get("ResTarget", {}).get("name") for item in insert.get("cols", ())]
        select = insert.get("selectStmt", {}).get("SelectStmt", {})
        for row in select.get("valuesLists", ()):
            items = row.get("List", {}).get("items", ())
            for name, item in zip(names, items, strict=False):
                columns = [(relation, name) for relation in relations if name]
                self._value(item, columns)

    def _comparison(self, expression: Node) -> None:
        operator = expression.get("A_Expr", expression)
        kind = operator.get("kind")
        names = [part.get("String", {}).get("sval") for part in operator.get("name", ())]
        # `=` and IN name whom the rows are about; `<>` and NOT IN name whom they are not.
        if names[-1:] != ["="] or kind not in ("AEXPR_OP", "AEXPR_IN"):
            return
        left, right = operator.get("lexpr", {}), operator.get("rexpr", {})
        for column_side, value_side in ((left, right), (right, left)):
            column = _unwrapped(column_side).get("ColumnRef")
            if column is None:
                continue
            fields = [field.get("String", {}).get("sval") for field in column.get("fields", ())]
            if not fields or fields[-1] is None:
                continue
            columns = self._columns_named(fields[:-1], fields[-1])
            values = value_side.get("List", {}).get("items", (value_side,))
            for value in values:
                self._value(value, columns)

    def _columns(self, relation: str, name: str | None) -> list[tuple[str, str]]:
        if name is None:
            return []
        return [(match, name) for match in self._matching(relation)]

    def _columns_named(self, qualifier: list[str | None], name: str) -> list[tuple[str, str]]:
        if qualifier:
            last = qualifier[-1] or ""
            relations = set(self._aliases.get(last, ()))
            if len(qualifier) > 1:
                relations |= set(self._matching(f"{qualifier[-2]}.{last}"))
        else:
            relations = set(self._relations)
        return [(relation, name) for relation in sorted(relations)]

    def _value(self, node: Node, columns: list[tuple[str, str]]) -> None:
        if not columns:
            return
        text = self._text(_unwrapped(node))
        if text is None:
            return
        for relation, column in columns:
            identifier_type = self._identifier_type(relation, column)
            if identifier_type is not None:
                self.found.append(Named(identifier_type, relation, text))

    def _identifier_type(self, relation: str, column: str) -> IdentifierType | None:
        table = self._catalog.table(relation)
        if table is None:
            return None
        if table.subject == column:
            return IdentifierType.SUBJECT
        category = table.columns.get(column)
        if category in IDENTIFIER_CATEGORIES:
            return IdentifierType(category)
        return None

    def _text(self, node: Node) -> str | None:
        constant = node.get("A_Const")
        if constant is not None:
            if constant.get("isnull"):
                return None
            for field in ("sval", "ival", "fval"):
                holder = constant.get(field)
                if holder is not None:
                    value = holder.get(field, 0 if field == "ival" else "")
                    return str(value)
            return None
        parameter = node.get("ParamRef")
        if parameter is not None:
            index = int(parameter.get("number", 0)) - 1
            if 0 <= index < len(self._parameters):
                return self._parameters[index]
        return None


def _unwrapped(node: Node) -> Node:
    while "TypeCast" in node:
        node = node["TypeCast"].get("arg", {})
    return node


def _qualified(range_var: Node) -> str:
    name = range_var.get("relname", "")
    schema = range_var.get("schemaname")
    return f"{schema}.{name}" if schema else name


def _nodes_of(node: object, node_type: str) -> Iterator[Node]:
    """Every node of a type in a parse tree, depth first."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            found = current.get(node_type)
            if found is not None:
                yield found
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)


def classified_values(
    text: str,
    relations: Sequence[str],
    catalog: PersonalDataCatalog,
    parameters: Sequence[str | None],
) -> tuple[dict[str, str], frozenset[str]]:
    """The values `text` compares with, or writes to, a column of the relations it touches:
    those of a catalogued personal column with the column's category, and those only of
    columns the catalog does not call personal (an order's status, a customer's id), which
    approvals show as written (custos/approvals/shown.py)."""
    try:
        tree = json.loads(parse_sql_json(text))
    except Exception:  # a text PostgreSQL's parser cannot read names nothing it runs
        return {}, frozenset()
    finder = _ClassifyingFinder(relations, catalog, parameters)
    for statement in tree.get("stmts", ()):
        finder.statement(statement.get("stmt", {}))
    return finder.personal, frozenset(finder.plain - finder.personal.keys())


class _ClassifyingFinder(_Finder):
    def __init__(
        self,
        relations: Sequence[str],
        catalog: PersonalDataCatalog,
        parameters: Sequence[str | None],
    ) -> None:
        super().__init__(relations, catalog, parameters)
        self.personal: dict[str, str] = {}
        self.plain: set[str] = set()

    def _value(self, node: Node, columns: list[tuple[str, str]]) -> None:
        text = self._text(_unwrapped(node)) if columns else None
        if text is None:
            return
        for relation, column in columns:
            # The subject's own key (a customer's id) says whose row, not who.
            table = self._catalog.table(relation)
            category = None if table is None else table.columns.get(column)
            if category is None:
                self.plain.add(text)
            else:
                self.personal[text] = category
