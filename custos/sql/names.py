"""How relation and function names are spelled in the facts, and how search_path resolves them.

Relations are "schema.name". The parser has already lower-cased unquoted identifiers and kept
quoted ones exactly, so "Customers" stays case-sensitive; a part holding a dot or a double quote
is written quoted, so that no name can pass for another.

We do not know which schemas hold which tables, so an unqualified name resolves to the first
schema of the search path (after "$user", which the gateway has substituted or dropped, and
pg_catalog, which holds no user tables). PostgreSQL searches pg_catalog before the path unless
the path lists it, so the well-known catalog relations (pg_class, pg_roles, pg_shadow,
pg_stat_activity...: CATALOG_RELATIONS) resolve to pg_catalog even when the path lists it
later: that is where a query finds them unless someone has created a same-named relation in
a schema the path lists before pg_catalog. A temporary table is written
pg_temp.name when created or named so; an unqualified reference to one resolves like any other
name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_SEARCH_PATH: tuple[str, ...] = ("public",)
"""Used for unqualified names when the path is empty or reset (PostgreSQL's own default)."""

CATALOG_RELATIONS = frozenset(
    {
        "pg_aggregate", "pg_am", "pg_amop", "pg_amproc", "pg_attrdef", "pg_attribute",
        "pg_auth_members", "pg_authid", "pg_available_extension_versions",
        "pg_available_extensions", "pg_backend_memory_contexts", "pg_cast", "pg_class",
        "pg_collation", "pg_config", "pg_constraint", "pg_conversion", "pg_cursors",
        "pg_database", "pg_db_role_setting", "pg_default_acl", "pg_depend", "pg_description",
        "pg_enum", "pg_event_trigger", "pg_extension", "pg_file_settings",
        "pg_foreign_data_wrapper", "pg_foreign_server", "pg_foreign_table", "pg_group",
        "pg_hba_file_rules", "pg_ident_file_mappings", "pg_index", "pg_indexes", "pg_inherits",
        "pg_init_privs", "pg_language", "pg_largeobject", "pg_largeobject_metadata", "pg_locks",
        "pg_matviews", "pg_namespace", "pg_opclass", "pg_operator", "pg_opfamily",
        "pg_parameter_acl", "pg_partitioned_table", "pg_policies", "pg_policy",
        "pg_prepared_statements", "pg_prepared_xacts", "pg_proc", "pg_publication",
        "pg_publication_namespace", "pg_publication_rel", "pg_publication_tables", "pg_range",
        "pg_replication_origin", "pg_replication_origin_status", "pg_replication_slots",
        "pg_rewrite", "pg_roles", "pg_rules", "pg_seclabel", "pg_seclabels", "pg_sequence",
        "pg_sequences", "pg_settings", "pg_shadow", "pg_shdepend", "pg_shdescription",
        "pg_shmem_allocations", "pg_shseclabel", "pg_stat_activity", "pg_stat_all_indexes",
        "pg_stat_all_tables", "pg_stat_archiver", "pg_stat_bgwriter", "pg_stat_checkpointer",
        "pg_stat_database", "pg_stat_database_conflicts", "pg_stat_gssapi", "pg_stat_io",
        "pg_stat_progress_analyze", "pg_stat_progress_basebackup", "pg_stat_progress_cluster",
        "pg_stat_progress_copy", "pg_stat_progress_create_index", "pg_stat_progress_vacuum",
        "pg_stat_recovery_prefetch", "pg_stat_replication", "pg_stat_replication_slots",
        "pg_stat_slru", "pg_stat_ssl", "pg_stat_subscription", "pg_stat_subscription_stats",
        "pg_stat_sys_indexes", "pg_stat_sys_tables", "pg_stat_user_functions",
        "pg_stat_user_indexes", "pg_stat_user_tables", "pg_stat_wal", "pg_stat_wal_receiver",
        "pg_stat_xact_all_tables", "pg_stat_xact_sys_tables", "pg_stat_xact_user_functions",
        "pg_stat_xact_user_tables", "pg_statio_all_indexes", "pg_statio_all_sequences",
        "pg_statio_all_tables", "pg_statio_sys_indexes", "pg_statio_sys_sequences",
        "pg_statio_sys_tables", "pg_statio_user_indexes", "pg_statio_user_sequences",
        "pg_statio_user_tables", "pg_statistic", "pg_statistic_ext", "pg_statistic_ext_data",
        "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_subscription",
        "pg_subscription_rel", "pg_tables", "pg_tablespace", "pg_timezone_abbrevs",
        "pg_timezone_names", "pg_transform", "pg_trigger", "pg_ts_config", "pg_ts_config_map",
        "pg_ts_dict", "pg_ts_parser", "pg_ts_template", "pg_type", "pg_user", "pg_user_mapping",
        "pg_user_mappings", "pg_views", "pg_wait_events",
    }
)  # fmt: skip
"""Every table and view of pg_catalog (PostgreSQL 15, and the views later versions add):
tests/test_sql_catalog.py checks it against the server's. A name not among them is looked
for in the search path even when it looks like one (a view named pg_stat_contacts)."""


INFORMATION_SCHEMA_RELATIONS = frozenset(
    {
        "_pg_foreign_data_wrappers", "_pg_foreign_servers", "_pg_foreign_table_columns",
        "_pg_foreign_tables", "_pg_user_mappings", "administrable_role_authorizations",
        "applicable_roles", "attributes", "character_sets", "check_constraint_routine_usage",
        "check_constraints", "collation_character_set_applicability", "collations",
        "column_column_usage", "column_domain_usage", "column_options", "column_privileges",
        "column_udt_usage", "columns", "constraint_column_usage", "constraint_table_usage",
        "data_type_privileges", "domain_constraints", "domain_udt_usage", "domains",
        "element_types", "enabled_roles", "foreign_data_wrapper_options",
        "foreign_data_wrappers", "foreign_server_options", "foreign_servers",
        "foreign_table_options", "foreign_tables", "information_schema_catalog_name",
        "key_column_usage", "parameters", "referential_constraints", "role_column_grants",
        "role_routine_grants", "role_table_grants", "role_udt_grants", "role_usage_grants",
        "routine_column_usage", "routine_privileges", "routine_routine_usage",
        "routine_sequence_usage", "routine_table_usage", "routines", "schemata", "sequences",
        "sql_features", "sql_implementation_info", "sql_parts", "sql_sizing",
        "table_constraints", "table_privileges", "tables", "transforms",
        "triggered_update_columns", "triggers", "udt_privileges", "usage_privileges",
        "user_defined_types", "user_mapping_options", "user_mappings", "view_column_usage",
        "view_routine_usage", "view_table_usage", "views",
    }
)  # fmt: skip
"""Every table and view of information_schema (tests/test_sql_catalog.py checks it against
the server's): any other relation there was created by someone, and is read like theirs."""


def is_catalog_relation(name: str) -> bool:
    return name in CATALOG_RELATIONS


def part(identifier: str) -> str:
    """One name part as the facts spell it: bare unless a dot or quote would make it ambiguous."""
    if "." in identifier or '"' in identifier:
        return '"' + identifier.replace('"', '""') + '"'
    return identifier


def qualified(schema: str, name: str) -> str:
    return f"{part(schema)}.{part(name)}"


def split_qualified(relation: str) -> tuple[str, str] | None:
    """(schema, name) of a relation as `qualified` spells it; None if it is not spelled so."""
    schema, rest = _leading_part(relation)
    if schema is None or not rest.startswith("."):
        return None
    name, rest = _leading_part(rest[1:])
    if name is None or rest:
        return None
    return schema, name


def _leading_part(text: str) -> tuple[str | None, str]:
    """The first name part of `text` and what follows it; None when malformed."""
    if not text.startswith('"'):
        end = text.find(".")
        bare = text if end < 0 else text[:end]
        # part() quotes any name holding a quote, so a bare one never does.
        return (bare, text[len(bare) :]) if bare and '"' not in bare else (None, text)
    chars: list[str] = []
    i = 1
    while True:
        end = text.find('"', i)
        if end < 0:
            return None, text
        chars.append(text[i:end])
        if text.startswith('""', end):
            chars.append('"')
            i = end + 2
            continue
        return "".join(chars), text[end + 1 :]


def resolution_schema(search_path: Sequence[str]) -> str:
    """The schema an unqualified, non-catalog name resolves to."""
    for schema in search_path:
        if schema not in ("$user", "pg_catalog"):
            return schema
    return DEFAULT_SEARCH_PATH[0]


class Resolver:
    """Qualifies relation names against one statement's search path."""

    __slots__ = ("_schema",)

    def __init__(self, search_path: Sequence[str]) -> None:
        self._schema = resolution_schema(search_path)

    def name(self, schema: str | None, relname: str) -> str:
        if schema is not None:
            return qualified(schema, relname)
        if is_catalog_relation(relname):
            return qualified("pg_catalog", relname)
        return qualified(self._schema, relname)

    def range_var(self, range_var: Mapping[str, Any]) -> str:
        schema = range_var.get("schemaname")
        if schema is None and range_var.get("relpersistence") == "t":
            schema = "pg_temp"
        return self.name(schema, range_var["relname"])

    def dotted(self, parts: Sequence[str]) -> str:
        """A relation named by its parts, as DROP and COMMENT give it: [catalog.][schema.]name."""
        if len(parts) == 1:
            return self.name(None, parts[0])
        return self.name(parts[-2], parts[-1])


def strings(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """The values of a list of String nodes (name lists in the parse tree)."""
    return [node["String"]["sval"] for node in nodes if "String" in node]


def function_name(funcname: Iterable[Mapping[str, Any]]) -> str:
    return ".".join(part(name) for name in strings(funcname))


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1


def truncated(identifier: str) -> str:
    """An identifier as PostgreSQL stores it: at most 63 bytes, cut on a character boundary.

    The parser does this for names in the statement; values such as a search_path given as a
    string are truncated only when the server splits them, so we do it for them here.
    """
    encoded = identifier.encode()
    if len(encoded) <= _MAX_IDENTIFIER_BYTES:
        return identifier
    return encoded[:_MAX_IDENTIFIER_BYTES].decode(errors="ignore")


def split_identifier_list(text: str) -> tuple[str, ...] | None:
    """A search_path value as set_config takes it ('crm, "Sales"'); None when malformed.

    Mirrors PostgreSQL's SplitIdentifierString: unquoted names are trimmed and lower-cased
    (ASCII letters only, as PostgreSQL does), quoted ones kept exactly with "" as an escaped
    quote; both are truncated to 63 bytes.
    """
    names: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            # An empty value is an empty path; a trailing comma is malformed.
            return tuple(names) if not names else None
        if text[i] == '"':
            name_chars: list[str] = []
            i += 1
            while True:
                end = text.find('"', i)
                if end < 0:
                    return None
                name_chars.append(text[i:end])
                i = end + 1
                if i < n and text[i] == '"':
                    name_chars.append('"')
                    i += 1
                    continue
                break
            name = "".join(name_chars)
        else:
            start = i
            while i < n and text[i] != "," and not text[i].isspace():
                i += 1
            name = text[start:i].translate(_ASCII_LOWER)
        if not name:
            return None
        names.append(truncated(name))
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return tuple(names)
        if text[i] != ",":
            return None
        i += 1
