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
    "^@": ("prefix", False),
}
PATTERN_FUNCTIONS: dict[str, tuple[str, bool]] = {
    # function -> (operator in the facts, negated): searches of their first argument's
    # values for their second, whatever the notation. "contains" finds a text anywhere;
    # "prefix" finds values that start with it.
    **dict.fromkeys(("textlike", "bpcharlike", "namelike", "like"), ("~~", False)),
    **dict.fromkeys(("textnlike", "bpcharnlike", "namenlike", "notlike"), ("~~", True)),
    **dict.fromkeys(("texticlike", "bpchariclike", "nameiclike"), ("~~*", False)),
    **dict.fromkeys(("texticnlike", "bpcharicnlike", "nameicnlike"), ("~~*", True)),
    **dict.fromkeys(("textregexeq", "bpcharregexeq", "nameregexeq"), ("~", False)),
    **dict.fromkeys(("textregexne", "bpcharregexne", "nameregexne"), ("~", True)),
    **dict.fromkeys(("texticregexeq", "bpcharicregexeq", "nameicregexeq"), ("~*", False)),
    **dict.fromkeys(("texticregexne", "bpcharicregexne", "nameicregexne"), ("~*", True)),
    **dict.fromkeys(
        (
            "regexp_like",
            "regexp_match",
            "regexp_matches",
            "regexp_count",
            "regexp_instr",
            "regexp_substr",
            "regexp_replace",
            "regexp_split_to_array",
            "regexp_split_to_table",
            "substring",
        ),
        ("~", False),
    ),
    **dict.fromkeys(("strpos", "position"), ("contains", False)),
    **dict.fromkeys(("starts_with", "text_starts_with"), ("prefix", False)),
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
        # ts_rewrite(query, select): its second argument is a query it runs for the rewrites
        "ts_rewrite",
        # dblink runs its SQL on another connection, perhaps this very database
        "dblink",
        "dblink_exec",
        "dblink_open",
        "dblink_fetch",
        "dblink_send_query",
    }
)
"""Calls of these (bare, or in any schema: dblink lives where it was installed) are dynamic."""

ROW_FUNCTIONS = frozenset(
    {
        # The built-in functions of one argument that take any row (record or a polymorphic
        # type): in field notation, `c.row_to_json` is row_to_json(c) when c has no such
        # column, and returns every column of c. tests/test_sql_catalog.py checks the list
        # against the server's catalog.
        "any_out",
        "anycompatible_out",
        "anycompatiblenonarray_out",
        "anyelement_out",
        "anynonarray_out",
        "array_agg",
        "concat",
        "count",
        "hash_record",
        "json_agg",
        "json_build_array",
        "json_build_object",
        "jsonb_agg",
        "jsonb_build_array",
        "jsonb_build_object",
        "mode",
        "num_nonnulls",
        "num_nulls",
        "pg_collation_for",
        "pg_column_compression",
        "pg_column_size",
        "pg_typeof",
        "quote_literal",
        "quote_nullable",
        "record_out",
        "record_send",
        "row_to_json",
        "to_json",
        "to_jsonb",
        "hash_record_extended",
        "json_populate_record",
        "jsonb_populate_record",
    }
)

COLLECTING_AGGREGATES = frozenset(
    {
        # Aggregates that gather the values of many rows into one, and window functions that
        # bring other rows' values into each: under them a LIMIT bounds the rows returned,
        # not the rows read. tests/test_sql_catalog.py checks the list
        # against the server's catalog.
        "array_agg",
        "json_agg",
        "json_agg_strict",
        "json_object_agg",
        "json_object_agg_strict",
        "json_object_agg_unique",
        "json_object_agg_unique_strict",
        "jsonb_agg",
        "jsonb_agg_strict",
        "jsonb_object_agg",
        "jsonb_object_agg_strict",
        "jsonb_object_agg_unique",
        "jsonb_object_agg_unique_strict",
        "percentile_cont",
        "percentile_disc",
        "range_agg",
        "range_intersect_agg",
        "string_agg",
        "xmlagg",
        # Window functions that put another row's value in this one.
        "lag",
        "lead",
        "first_value",
        "last_value",
        "nth_value",
    }
)
SELECTING_AGGREGATES = frozenset(
    {
        "min",
        "max",
        "mode",
        "bit_and",
        "bit_or",
        "bit_xor",
        "bool_and",
        "bool_or",
        "every",
        "range_agg",
        "range_intersect_agg",
        "percentile_cont",
        "sum",
        "avg",
        "corr",
        "covar_pop",
        "covar_samp",
        "regr_avgx",
        "regr_avgy",
        "regr_count",
        "regr_intercept",
        "regr_r2",
        "regr_slope",
        "regr_sxx",
        "regr_sxy",
        "regr_syy",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "variance",
        "var_pop",
        "var_samp",
        "rank",
        "dense_rank",
        "percent_rank",
        "cume_dist",
    }
)
"""Every other built-in aggregate but count: each returns a value of the rows it reads, or
one computed from them, and one row's own value whenever a CASE leaves it alone
(`min(CASE WHEN id % 50 = k THEN name END)`; the sum of one number is that number, and
numbers can carry names). Under GROUP BY, or with many such columns, LIMIT bounds the rows
returned but not those read. tests/test_sql_catalog.py checks the two lists against
pg_aggregate."""

SET_RETURNING_FUNCTIONS = frozenset(
    {
        "_pg_expandarray",
        "aclexplode",
        "generate_series",
        "generate_subscripts",
        "json_array_elements",
        "json_array_elements_text",
        "json_each",
        "json_each_text",
        "json_object_keys",
        "json_populate_recordset",
        "json_to_recordset",
        "jsonb_array_elements",
        "jsonb_array_elements_text",
        "jsonb_each",
        "jsonb_each_text",
        "jsonb_object_keys",
        "jsonb_path_query",
        "jsonb_path_query_tz",
        "jsonb_populate_recordset",
        "jsonb_to_recordset",
        "pg_extension_update_paths",
        "pg_get_multixact_members",
        "pg_get_publication_tables",
        "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_peek_binary_changes",
        "pg_logical_slot_peek_changes",
        "pg_ls_dir",
        "pg_ls_replslotdir",
        "pg_ls_tmpdir",
        "pg_mcv_list_items",
        "pg_options_to_table",
        "pg_partition_ancestors",
        "pg_partition_tree",
        "pg_snapshot_xip",
        "pg_stat_get_activity",
        "pg_stat_get_progress_info",
        "pg_stat_get_subscription",
        "pg_tablespace_databases",
        "regexp_matches",
        "regexp_split_to_table",
        "string_to_table",
        "ts_debug",
        "ts_parse",
        "ts_stat",
        "ts_token_type",
        "txid_snapshot_xip",
        "unnest",
    }
)
"""Built-in functions returning rows, taking arguments: given a value computed from a
column, the rows they return (none when a count is 0: generate_series(1, f(name))) pick
which rows the statement returns, wherever the call stands. tests/test_sql_catalog.py
checks the list against pg_proc."""

ADVISORY_LOCKING = (
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
)
"""The functions that take an advisory lock (the LOCK a statement could take instead)."""

STATE_SETTING_FUNCTIONS = frozenset({"setseed", "setval", *ADVISORY_LOCKING})
"""Functions that leave their argument in the session, where a later row of the same
statement reads it back: after `setseed(f(name))` the next `random()` differs for the rows
that match, and so do `currval` after `setval` and a lock tried after one taken. Given a
value computed from a column, they search it as a filter on it would."""

BUILTIN_OPERATORS = frozenset(
    {
        "!!", "!~", "!~*", "!~~", "!~~*", "#", "##", "#-", "#>", "#>>", "%", "&", "&&", "&<",
        "&<|", "&>", "*", "*<", "*<=", "*<>", "*=", "*>", "*>=", "+", "-", "->", "->>", "-|-",
        "/", "<", "<->", "<<", "<<=", "<<|", "<=", "<>", "<@", "<^", "=", ">", ">=", ">>",
        ">>=", ">^", "?", "?#", "?&", "?-", "?-|", "?|", "?||", "@", "@-@", "@>", "@?", "@@",
        "@@@", "^", "^@", "|", "|&>", "|/", "|>>", "||", "||/", "~", "~*", "~<=~", "~<~", "~=",
        "~>=~", "~>~", "~~", "~~*"
    }
)  # fmt: skip
"""The names of the database's own operators (tests/test_sql_catalog.py checks them). An
operator of another name is someone's, and what it tests of its operands is not known."""

FUNCTION_STATEMENTS: dict[str, tuple[str, str | None]] = {
    # function -> (the kind of the statement that does the same, its COPY destination):
    # a capability reached by a function is decided as the statement that reaches it.
    "pg_notify": ("other", None),  # NOTIFY
    **dict.fromkeys(
        (
            *ADVISORY_LOCKING,
            "pg_advisory_unlock",
            "pg_advisory_unlock_shared",
            "pg_advisory_unlock_all",
        ),
        ("other", None),  # LOCK
    ),
    # Server-side files: a large object imported from one, or exported to one, and files
    # read whole, are COPY FROM and COPY TO a file on the database server.
    "lo_import": ("copy_from", "file"),
    "pg_read_file": ("copy_from", "file"),
    "pg_read_binary_file": ("copy_from", "file"),
    "lo_export": ("copy_to", "file"),
}

ROLE_SETTINGS = frozenset({"role", "session_authorization"})
"""Settings that change the role the session's statements run as."""

EFFECT_FUNCTIONS = frozenset(
    {
        # Large objects: stored outside any table the statement names.
        "loread",
        "lowrite",
        # Other sessions' backends, the server's configuration and logs.
        "pg_cancel_backend",
        "pg_terminate_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_log_backend_memory_contexts",
        "pg_promote",
        "pg_import_system_collations",
        # WAL, backups and replication.
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_logical_emit_message",
        "pg_copy_logical_replication_slot",
        "pg_copy_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_create_physical_replication_slot",
        "pg_drop_replication_slot",
        "pg_replication_slot_advance",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_peek_changes",
        "pg_logical_slot_peek_binary_changes",
        # Statistics the server keeps for everyone.
        "pg_stat_reset",
        "pg_stat_reset_shared",
        "pg_stat_reset_single_table_counters",
        "pg_stat_reset_single_function_counters",
        "pg_stat_reset_slru",
        "pg_stat_reset_replication_slot",
        "pg_stat_reset_subscription_stats",
        "pg_stat_statements_reset",
        # Indexes' own maintenance, beyond the statement's rows.
        "brin_summarize_new_values",
        "brin_summarize_range",
        "brin_desummarize_range",
        "gin_clean_pending_list",
    }
)
EFFECT_FUNCTION_PREFIXES = (
    "lo_",  # large objects
    "pg_read_",  # server files
    "pg_ls_",
    "pg_stat_file",
    "pg_file_",  # adminpack
    "pg_wal_replay_",
    "pg_replication_origin_",
    "dblink",  # other databases
)
"""Functions whose effects reach beyond the tables a statement names: large objects, the
server's files, other sessions, its configuration, WAL and replication, other databases.
Policy refuses a call of one unless a rule that fired allows it by name (its `functions`),
whatever else the rules allow (custos/policy/engine.py). Advisory locks, pg_notify,
set_config and server-file COPY are decided as the statements they amount to
(FUNCTION_STATEMENTS); tests/test_sql_catalog.py checks these against the server."""


def has_effects(function: str) -> bool:
    """Whether a call, as the facts name it (bare or schema-qualified), has such effects.

    By its name in any schema: extensions (dblink, adminpack) live where they were
    installed, and a function of another schema named like one is taken for it.
    """
    name = function.rpartition(".")[2]
    return name in EFFECT_FUNCTIONS or name.startswith(EFFECT_FUNCTION_PREFIXES)
