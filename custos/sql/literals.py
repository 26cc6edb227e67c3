"""Constants read out of parse-tree expressions: literals, parameters, constant conditions.

Nodes are pglast's JSON form: {"NodeType": {fields}}; a field left at its zero value is absent,
so `{"ival": {}}` is the integer 0 and `{"boolval": {}}` is false.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, cast

from custos.sql.facts import ParameterRef

Node = Mapping[str, Any]

_TRUE_WORDS = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"})
_MISSING = object()


def _unwrap_casts(node: Node) -> Node:
    while "TypeCast" in node:
        node = node["TypeCast"].get("arg", {})
    return node


_consumed: ContextVar[list[int] | None] = ContextVar("custos_consumed_literals", default=None)


@contextmanager
def recording_consumed_literals() -> Iterator[list[int]]:
    """Collects the locations of the literals whose values the analysis reads.

    Every value the facts take from a literal is read through `constant`, so
    outside this list a literal's value cannot change the facts: the cache
    relies on that to share one analysis among texts that differ only there.
    """
    consumed: list[int] = []
    token = _consumed.set(consumed)
    try:
        yield consumed
    finally:
        _consumed.reset(token)


def constant(node: Node) -> object:
    """The Python value of a literal (None for NULL), or _MISSING when it is not a literal."""
    const = _unwrap_casts(node).get("A_Const")
    if const is None:
        return _MISSING
    consumed = _consumed.get()
    if consumed is not None:
        # A location of 0 is left out of the JSON, like every zero value.
        consumed.append(const.get("location", 0))
    if const.get("isnull"):
        return None
    for field in ("ival", "fval", "sval", "boolval", "bsval"):
        holder = const.get(field)
        if holder is not None:
            value = holder.get(field)
            if field == "ival":
                return int(value or 0)
            if field == "fval":
                return _number(value)
            if field == "boolval":
                return bool(value)
            return value if value is not None else ""
    return _MISSING


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def string(node: Node) -> str | None:
    value = constant(node)
    return value if isinstance(value, str) else None


def boolean(node: Node) -> bool | None:
    value = constant(node)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


def parameter(node: Node) -> ParameterRef | None:
    param = _unwrap_casts(node).get("ParamRef")
    return None if param is None else ParameterRef(int(param.get("number", 0)))


def row_count(node: Node | None) -> int | ParameterRef | None:
    """A LIMIT / FETCH FIRST count: an int, a parameter, or None for none / not a literal."""
    if node is None:
        return None
    value = constant(node)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return parameter(node)


def pattern(node: Node | None) -> str | ParameterRef | None:
    """The pattern of a LIKE / regex match, through the ESCAPE wrapper PostgreSQL adds."""
    if node is None:
        return None
    call = node.get("FuncCall")
    if call is not None and call["funcname"][-1]["String"]["sval"] in (
        "like_escape",
        "similar_to_escape",
    ):
        args = call.get("args") or ()
        if not args:
            return None
        node = args[0]
    text = string(node)
    return text if text is not None else parameter(node)


def truth(node: Node) -> bool | None:
    """Whether a condition is constant true or false, with unknowns where it depends on rows.

    Three-valued, so `id = 5 OR 1 = 1` is true and `NOT (id = 5 AND false)` is true too.
    """
    bool_expr = node.get("BoolExpr")
    if bool_expr is not None:
        args = [truth(arg) for arg in bool_expr.get("args") or ()]
        op = bool_expr.get("boolop")
        if op == "NOT_EXPR":
            return None if not args or args[0] is None else not args[0]
        if op == "OR_EXPR":
            if True in args:
                return True
            return False if args and all(arg is False for arg in args) else None
        if False in args:
            return False
        return True if args and all(arg is True for arg in args) else None
    expr = node.get("A_Expr")
    if expr is not None and expr.get("kind") == "AEXPR_OP":
        return _comparison(expr)
    null_test = node.get("NullTest")
    if null_test is not None:
        value = constant(null_test.get("arg", {}))
        if value is _MISSING:
            return None
        is_null = value is None
        return is_null if null_test.get("nulltesttype") == "IS_NULL" else not is_null
    return boolean(node)


def _comparison(expr: Node) -> bool | None:
    # Only what holds under any collation and type resolution: numbers compared, equal texts.
    # A side that is not a literal settles it: the other's value is not read (`id = 5` reads
    # no literal, so texts that differ only in the 5 share one analysis).
    left = constant(expr.get("lexpr", {}))
    if left is _MISSING:
        return None
    right = constant(expr.get("rexpr", {}))
    op = expr["name"][-1]["String"]["sval"]
    if isinstance(left, str) and isinstance(right, str):
        return True if op == "=" and left == right else None
    if not (_is_number(left) and _is_number(right)):
        return None
    a, b = cast(float, left), cast(float, right)  # Python compares int and float exactly
    results = {"=": a == b, "<>": a != b, "!=": a != b, "<": a < b, "<=": a <= b}
    results.update({">": a > b, ">=": a >= b})
    return results.get(op)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
