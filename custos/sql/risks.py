"""Names policy must see: pattern operators, and functions the analysis cannot see into."""

from __future__ import annotations

PATTERN_OPERATORS: dict[str, tuple[str, bool]] = {
    # operator as written -> (operator in the facts, negated)
    "~~": ("~~", False),
    "!~~": ("~~", True),
    "~~*": ("~~*", False),
    "!~~*": ("~~*", True),
    "~": ("~", False),
    "!~": ("~", True),
    "~*": ("~*", False),
    "!~*": ("~*", True),
}
PATTERN_EXPR_KINDS = frozenset(
    {"AEXPR_LIKE", "AEXPR_ILIKE", "AEXPR_SIMILAR", "AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_OP_ALL"}
)
"""The A_Expr kinds in which an operator of PATTERN_OPERATORS is a pattern match."""

SQL_TEXT_FUNCTIONS = frozenset(
    {
        # run SQL given as text, or read whole tables, schemas or databases named by a value
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        # fetch from a portal or cursor named by a value: whatever statement it holds runs
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "ts_stat",
        # dblink runs its SQL on another connection, perhaps this very database
        "dblink",
        "dblink_exec",
        "dblink_open",
        "dblink_fetch",
        "dblink_send_query",
    }
)
"""Calls of these (bare, or in any schema: dblink lives where it was installed) are dynamic."""

ROLE_SETTINGS = frozenset({"role", "session_authorization"})
"""Settings that change the role the session's statements run as."""
