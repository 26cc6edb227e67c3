"""The functions a statement reaches through the relations it touches, from the catalog.

A statement's text names the functions it calls; the database runs others on its behalf.
Reading a view runs the functions of its definition (and of the views it reads), and a
table's row-level security policies run theirs; writing a table runs its column defaults,
its check constraints, the checks of its columns' domains and its triggers. A function
rule must match them all: a view that calls `lo_import` reads a server file whoever
selects from it. This reads, for each relation, the functions reached by reading it and
by writing it, operators resolved to the functions behind them.

Relations of pg_catalog and information_schema are not asked about: they are the
database's own, and what they call is read-only (but a relation someone created in
information_schema is asked about like any other).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from custos.sql.analysis import analyze
from custos.sql.names import (
    CATALOG_RELATIONS,
    INFORMATION_SCHEMA_RELATIONS,
    qualified,
    split_identifier_list,
    split_qualified,
)
from custos.sql.reached import UNDEFINED, Reach, called_functions

Row = tuple[str | None, ...]


FIRST_USER_OID = 16384
"""PostgreSQL's FirstNormalObjectId: every object with a lower OID is the database's own,
made by initdb (pg_catalog's and information_schema's); any other was made by someone, in
whatever schema, and what it runs is read."""

EMPTY_SEARCH_PATH = "SELECT pg_catalog.set_config('search_path', '', false)"
"""Run first on a connection that reads definitions, so that they name every object with its
schema, whatever the search path of the sessions whose statements read them."""

# Views are followed down to the relations they read, at most this deep.
_VIEW_DEPTH = 16

_REACH_QUERY = """\
WITH RECURSIVE rel(oid, schema_name, relation_name, depth) AS (
  SELECT c.oid, n.nspname::text, c.relname::text, 0
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  WHERE (n.nspname::text, c.relname::text) IN (VALUES {relations})
  UNION
  SELECT d.refobjid, rel.schema_name, rel.relation_name, rel.depth + 1
  FROM rel
  JOIN pg_catalog.pg_rewrite AS r ON r.ev_class = rel.oid
  JOIN pg_catalog.pg_depend AS d
    ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
   AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> rel.oid
  WHERE rel.depth < {depth}
),
-- Expressions, as SQL text: the gateway analyses them for the functions they call (the
-- built-in ones are pinned, so pg_depend does not name them).
expressions(schema_name, relation_name, how, expression) AS (
  SELECT rel.schema_name, rel.relation_name, 'read', pg_catalog.pg_get_viewdef(rel.oid)
  FROM rel JOIN pg_catalog.pg_class AS c ON c.oid = rel.oid AND c.relkind IN ('v', 'm')
  UNION ALL
  SELECT rel.schema_name, rel.relation_name, 'read',
         'SELECT ' || pg_catalog.pg_get_expr(p.polqual, p.polrelid)
  FROM rel JOIN pg_catalog.pg_policy AS p ON p.polrelid = rel.oid WHERE p.polqual IS NOT NULL
  UNION ALL
  SELECT rel.schema_name, rel.relation_name, 'write',
         'SELECT ' || pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
  FROM rel JOIN pg_catalog.pg_policy AS p ON p.polrelid = rel.oid
  WHERE p.polwithcheck IS NOT NULL
  UNION ALL
  SELECT rel.schema_name, rel.relation_name, 'write',
         'SELECT ' || pg_catalog.pg_get_expr(a.adbin, a.adrelid)
  FROM rel JOIN pg_catalog.pg_attrdef AS a ON a.adrelid = rel.oid
  UNION ALL
  SELECT rel.schema_name, rel.relation_name, 'write',
         'SELECT ' || pg_catalog.pg_get_expr(k.conbin, k.conrelid)
  FROM rel JOIN pg_catalog.pg_constraint AS k ON k.conrelid = rel.oid AND k.contype = 'c'
  UNION ALL
  SELECT rel.schema_name, rel.relation_name, 'write',
         pg_catalog.regexp_replace(pg_catalog.pg_get_constraintdef(k.oid), '^CHECK ', 'SELECT ')
  FROM rel
  JOIN pg_catalog.pg_attribute AS a
    ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_catalog.pg_constraint AS k ON k.contypid = a.atttypid AND k.contype = 'c'
),
-- Functions by their object: triggers, user-defined casts from the relation's row type
-- or its columns' types (an implicit one runs where no cast is written), and what
-- user-defined operators call.
functions(schema_name, relation_name, how, function_oid) AS (
  SELECT rel.schema_name, rel.relation_name, 'write', t.tgfoid
  FROM rel JOIN pg_catalog.pg_trigger AS t ON t.tgrelid = rel.oid AND NOT t.tgisinternal
  UNION ALL
  SELECT rel.schema_name, rel.relation_name, 'read', k.castfunc
  FROM rel
  JOIN pg_catalog.pg_cast AS k
    ON k.castfunc >= {first_user_oid}
   AND (k.castsource = (SELECT c.reltype FROM pg_catalog.pg_class AS c WHERE c.oid = rel.oid)
     OR k.castsource IN (SELECT a.atttypid FROM pg_catalog.pg_attribute AS a
                         WHERE a.attrelid = rel.oid AND a.attnum > 0))
  UNION ALL
  SELECT rel.schema_name, rel.relation_name,
         CASE WHEN d.classid IN ('pg_catalog.pg_rewrite'::regclass,
                                 'pg_catalog.pg_policy'::regclass)
              THEN 'read' ELSE 'write' END,
         CASE d.refclassid WHEN 'pg_catalog.pg_proc'::regclass THEN d.refobjid
           ELSE (SELECT o.oprcode::oid FROM pg_catalog.pg_operator AS o
                 WHERE o.oid = d.refobjid) END
  FROM rel
  JOIN pg_catalog.pg_depend AS d
    ON d.refclassid IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_operator'::regclass)
   AND ((d.classid = 'pg_catalog.pg_rewrite'::regclass
         AND d.objid IN (SELECT r.oid FROM pg_catalog.pg_rewrite AS r WHERE r.ev_class = rel.oid))
     OR (d.classid = 'pg_catalog.pg_policy'::regclass
         AND d.objid IN (SELECT p.oid FROM pg_catalog.pg_policy AS p WHERE p.polrelid = rel.oid))
     OR (d.classid = 'pg_catalog.pg_attrdef'::regclass
         AND d.objid IN (SELECT a.oid FROM pg_catalog.pg_attrdef AS a WHERE a.adrelid = rel.oid))
     OR (d.classid = 'pg_catalog.pg_constraint'::regclass
         AND d.objid IN (SELECT k.oid FROM pg_catalog.pg_constraint AS k
                         WHERE k.conrelid = rel.oid
                            OR k.contypid IN (SELECT a.atttypid FROM pg_catalog.pg_attribute AS a
                                              WHERE a.attrelid = rel.oid AND a.attnum > 0))))
)
SELECT f.schema_name, f.relation_name, f.how, pn.nspname::text, p.proname::text, NULL
FROM functions AS f
JOIN pg_catalog.pg_proc AS p ON p.oid = f.function_oid
JOIN pg_catalog.pg_namespace AS pn ON pn.oid = p.pronamespace
UNION ALL
SELECT e.schema_name, e.relation_name, e.how, NULL, NULL, e.expression
FROM expressions AS e WHERE e.expression IS NOT NULL
UNION ALL
-- Each view read, to read the statement through (custos/sql/views.py): its name, and its
-- defining query with every name qualified (the catalog connection's search path is empty).
SELECT rel.schema_name, rel.relation_name, 'view', n.nspname::text, c.relname::text,
       pg_catalog.pg_get_viewdef(c.oid)
FROM rel
JOIN pg_catalog.pg_class AS c ON c.oid = rel.oid AND c.relkind IN ('v', 'm')
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace"""


_SYSTEM_RELATIONS = (
    ("pg_catalog.", CATALOG_RELATIONS),
    ("information_schema.", INFORMATION_SCHEMA_RELATIONS),
)


def asked_about(relation: str) -> bool:
    """Whether the relation's reach is read from the catalog: not the database's own (a
    relation someone created in pg_catalog or information_schema is theirs, and asked
    about)."""
    for schema, own in _SYSTEM_RELATIONS:
        if relation.startswith(schema):
            parts = split_qualified(relation)
            return parts is None or parts[1] not in own
    return True


def reach_query(relations: Collection[str]) -> str:
    """One query for what every relation in `relations` reaches (askable names only)."""
    pairs = []
    for relation in sorted(relations):
        parts = split_qualified(relation)
        if parts is None:
            raise ValueError(f"cannot ask the database about the relation name {relation!r}")
        pairs.append(f"({string_literal(parts[0])}, {string_literal(parts[1])})")
    if not pairs:
        raise ValueError("no relations to ask about")
    return _REACH_QUERY.format(
        relations=", ".join(pairs), depth=_VIEW_DEPTH, first_user_oid=FIRST_USER_OID
    )


_OPERATORS_QUERY = """\
SELECT v.schema_name, v.operator_name, pn.nspname::text, p.proname::text
FROM (VALUES {operators}) AS v(schema_name, operator_name)
JOIN pg_catalog.pg_operator AS o
  ON o.oprname = v.operator_name AND o.oid >= {first_user_oid}
JOIN pg_catalog.pg_namespace AS n
  ON n.oid = o.oprnamespace AND (v.schema_name IS NULL OR n.nspname = v.schema_name)
JOIN pg_catalog.pg_proc AS p ON p.oid = o.oprcode
JOIN pg_catalog.pg_namespace AS pn ON pn.oid = p.pronamespace
UNION ALL
-- Names no operator has at all (the database's own included): one may be created later.
SELECT v.schema_name, v.operator_name, '{undefined}', NULL
FROM (VALUES {operators}) AS v(schema_name, operator_name)
WHERE NOT EXISTS (
  SELECT FROM pg_catalog.pg_operator AS o
  JOIN pg_catalog.pg_namespace AS n ON n.oid = o.oprnamespace
  WHERE o.oprname = v.operator_name AND (v.schema_name IS NULL OR n.nspname = v.schema_name)
)"""


_TYPES_QUERY = """\
WITH v(schema_name, type_name) AS (VALUES {types}),
t AS (
  SELECT v.schema_name, v.type_name, t.oid, t.typinput
  FROM v
  JOIN pg_catalog.pg_type AS t ON t.typname = v.type_name
  JOIN pg_catalog.pg_namespace AS n
    ON n.oid = t.typnamespace AND (v.schema_name IS NULL OR n.nspname = v.schema_name)
)
-- A user-defined type's input function; the user-defined casts to any type of the name,
-- the database's own types too (CREATE CAST (crm.orders AS text) WITH FUNCTION ...).
SELECT t.schema_name, t.type_name, pn.nspname::text, p.proname::text, NULL
FROM t
JOIN pg_catalog.pg_proc AS p
  ON (p.oid = t.typinput AND t.oid >= {first_user_oid})
  OR p.oid IN (SELECT c.castfunc FROM pg_catalog.pg_cast AS c
               WHERE c.casttarget = t.oid AND c.castfunc >= {first_user_oid})
JOIN pg_catalog.pg_namespace AS pn ON pn.oid = p.pronamespace
UNION ALL
SELECT t.schema_name, t.type_name, NULL, NULL,
       pg_catalog.regexp_replace(pg_catalog.pg_get_constraintdef(k.oid), '^CHECK ', 'SELECT ')
FROM t JOIN pg_catalog.pg_constraint AS k ON k.contypid = t.oid AND k.contype = 'c'
UNION ALL
-- Names no type has at all: one may be created later.
SELECT v.schema_name, v.type_name, '{undefined}', NULL, NULL
FROM v WHERE NOT EXISTS (SELECT FROM t WHERE t.type_name = v.type_name
                         AND t.schema_name IS NOT DISTINCT FROM v.schema_name)"""


# A PL/pgSQL body is read as its whole definition (pglast parses that); a SQL one as its
# statements. Defaults of arguments run when a call leaves them out, and an aggregate runs
# its support functions.
_BODIES_QUERY = """\
WITH v(schema_name, function_name) AS (VALUES {functions}),
f AS (
  SELECT v.schema_name, v.function_name, p.oid, p.prokind, l.lanname::text AS language
  FROM v
  JOIN pg_catalog.pg_proc AS p
    ON p.proname = v.function_name AND p.oid >= {first_user_oid}
  JOIN pg_catalog.pg_namespace AS n
    ON n.oid = p.pronamespace AND (v.schema_name IS NULL OR n.nspname = v.schema_name)
  JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
)
SELECT f.schema_name, f.function_name, NULL, NULL, f.language,
       CASE WHEN f.language = 'plpgsql' THEN pg_catalog.pg_get_functiondef(f.oid)
            WHEN p.prosqlbody IS NOT NULL THEN pg_catalog.pg_get_function_sqlbody(f.oid)
            ELSE p.prosrc END,
       CASE WHEN p.proretset THEN 'set' END,
       (SELECT pg_catalog.substr(c, 13) FROM pg_catalog.unnest(p.proconfig) AS c
        WHERE pg_catalog.starts_with(c, 'search_path=') LIMIT 1)
FROM f JOIN pg_catalog.pg_proc AS p ON p.oid = f.oid
WHERE f.prokind <> 'a'
UNION ALL
SELECT f.schema_name, f.function_name, NULL, NULL, 'sql',
       'SELECT ' || pg_catalog.pg_get_expr(p.proargdefaults, 0), NULL, NULL
FROM f JOIN pg_catalog.pg_proc AS p ON p.oid = f.oid
WHERE p.proargdefaults IS NOT NULL
UNION ALL
-- The checks of the domains a function returns or takes: they run on every call.
SELECT f.schema_name, f.function_name, NULL, NULL, 'sql',
       pg_catalog.regexp_replace(pg_catalog.pg_get_constraintdef(k.oid), '^CHECK ', 'SELECT '),
       NULL, NULL
FROM f JOIN pg_catalog.pg_proc AS p ON p.oid = f.oid
JOIN pg_catalog.pg_constraint AS k
  ON k.contype = 'c'
 AND (k.contypid = p.prorettype OR k.contypid = ANY (p.proargtypes::pg_catalog.oid[]))
UNION ALL
SELECT f.schema_name, f.function_name, pn.nspname::text, s.proname::text, NULL, NULL, NULL,
       NULL
FROM f
JOIN pg_catalog.pg_aggregate AS a ON a.aggfnoid = f.oid
JOIN pg_catalog.pg_proc AS s
  ON s.oid IN (a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn,
               a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn)
JOIN pg_catalog.pg_namespace AS pn ON pn.oid = s.pronamespace
UNION ALL
-- Names no function has at all (the database's own included): one may be created later.
SELECT v.schema_name, v.function_name, '{undefined}', NULL, NULL, NULL, NULL, NULL
FROM v
WHERE NOT EXISTS (
  SELECT FROM pg_catalog.pg_proc AS p
  JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
  WHERE p.proname = v.function_name AND (v.schema_name IS NULL OR n.nspname = v.schema_name)
)"""

# The function schema column's marker, in the rows of bodies_query, operators_query and
# types_query, of a name nothing has.
_UNDEFINED_MARK = "-undefined-"


def bodies_query(functions: Collection[str]) -> str:
    """One query for the bodies of every user-defined function of these names (as the facts
    spell them: `schema.f` or `f`), and the support functions of aggregates among them."""
    return _BODIES_QUERY.format(
        functions=_named_values(functions),
        first_user_oid=FIRST_USER_OID,
        undefined=_UNDEFINED_MARK,
    )


def bodies_from_rows(
    rows: Iterable[Row], body_reach: Callable[[str, str, tuple[str, ...] | None], Reach]
) -> dict[str, Reach]:
    """name (as the facts spell it) -> what calling it runs and reads, from bodies_query's
    rows: every function of that name, since which one a call means is the database's;
    UNDEFINED for a name nothing has."""
    found: dict[str, set[str]] = {}
    absent: set[str] = set()
    relations: dict[str, set[str]] = {}
    columns: dict[str, set[tuple[str, str]]] = {}
    unknown: set[str] = set()
    returning_sets: set[str] = set()
    for schema, name, function_schema, function, language, body, returns, path in rows:
        if name is None:
            raise ValueError("the query returned a row without a name")
        key = f"{schema}.{name}" if schema is not None else name
        if function_schema == _UNDEFINED_MARK:
            absent.add(key)
            continue
        functions = found.setdefault(key, set())
        if returns == "set":
            returning_sets.add(key)
        if function is not None:
            functions.update((function, f"{function_schema}.{function}"))
            continue
        own_path = split_identifier_list(path) if path is not None else None
        if path is not None and (own_path is None or "$user" in own_path):
            # A search path that cannot be read, or that names the login running it:
            # which relations its unqualified names are is not known here.
            unknown.add(key)
            continue
        reach = body_reach(language or "", body or "", own_path)
        functions.update(reach.read)
        relations.setdefault(key, set()).update(reach.relations)
        columns.setdefault(key, set()).update(reach.columns)
        if reach.unknown:
            unknown.add(key)
    bodies = {
        key: Reach(
            frozenset(functions),
            unknown=key in unknown,
            returns_set=key in returning_sets,
            relations=frozenset(relations.get(key, ())),
            columns=frozenset(columns.get(key, ())),
        )
        for key, functions in found.items()
    }
    return {**dict.fromkeys(absent, UNDEFINED), **bodies}


def operators_query(operators: Collection[str]) -> str:
    """One query for the functions behind every user-defined operator of these names (as
    the facts spell them: `schema.op` or `op`); the database's own run nothing that matters."""
    return _OPERATORS_QUERY.format(
        operators=_named_values(operators), first_user_oid=FIRST_USER_OID, undefined=_UNDEFINED_MARK
    )


def types_query(types: Collection[str]) -> str:
    """One query for what casting a value to each user-defined type of these names runs:
    its input function, the casts to it, its domain checks (as SQL to analyse)."""
    return _TYPES_QUERY.format(
        types=_named_values(types), first_user_oid=FIRST_USER_OID, undefined=_UNDEFINED_MARK
    )


def behind_from_rows(
    rows: Iterable[Row], functions_in: Callable[[str], frozenset[str] | None]
) -> dict[str, Reach]:
    """name (as the facts spell it) -> what it runs, from operators_query's or types_query's
    rows (read: the functions; unknown: an expression that could not be analysed);
    UNDEFINED for a name nothing has."""
    found: dict[str, set[str]] = {}
    unknown: set[str] = set()
    absent: set[str] = set()
    for row in rows:
        schema, name, function_schema, function = row[:4]
        expression = row[4] if len(row) > 4 else None
        if name is None:
            raise ValueError("the query returned a row without a name")
        key = f"{schema}.{name}" if schema is not None else name
        if function_schema == _UNDEFINED_MARK:
            absent.add(key)
            continue
        functions = found.setdefault(key, set())
        if not _add_run(functions, function_schema, function, expression, functions_in):
            unknown.add(key)
    behind = {
        key: Reach(frozenset(functions), unknown=key in unknown) for key, functions in found.items()
    }
    return {**dict.fromkeys(absent, UNDEFINED), **behind}


def _named_values(names: Collection[str]) -> str:
    pairs = []
    for spelled in sorted(names):
        schema, _, name = spelled.rpartition(".")
        if not name or "\\" in spelled or "\x00" in spelled:
            raise ValueError(f"cannot ask the database about {spelled!r}")
        owner = string_literal(schema) if schema else "NULL::text"
        pairs.append(f"({owner}, {string_literal(name)})")
    if not pairs:
        raise ValueError("no names to ask about")
    return ", ".join(pairs)


def reach_from_rows(
    rows: Iterable[Row], functions_in: Callable[[str], frozenset[str] | None]
) -> dict[str, Reach]:
    """relation (spelled as the facts spell it) -> its reach, from reach_query's rows.

    `functions_in` gives the functions an expression's SQL calls (None: it could not be
    analysed, and the relation's reach is unknown). A function the catalog names is named
    both bare and schema-qualified, as a rule may name it either way.
    """
    read: dict[str, set[str]] = {}
    write: dict[str, set[str]] = {}
    unknown: set[str] = set()
    for schema, name, how, function_schema, function, expression in rows:
        if schema is None or name is None:
            raise ValueError("the reach query returned a row without a relation name")
        if how == "view":
            continue  # see views_from_rows
        relation = qualified(schema, name)
        found = (read if how == "read" else write).setdefault(relation, set())
        if not _add_run(found, function_schema, function, expression, functions_in):
            unknown.add(relation)
    return {
        relation: Reach(
            frozenset(read.get(relation, ())),
            frozenset(write.get(relation, ())),
            unknown=relation in unknown,
        )
        for relation in read.keys() | write.keys()
    }


def views_from_rows(rows: Iterable[Row]) -> dict[str, dict[str, str]]:
    """relation -> the views reading it reads (itself, if it is one, and those its
    definition reads, however deep), each with its defining query: from reach_query's
    rows. A relation that reads no view has no entry."""
    views: dict[str, dict[str, str]] = {}
    for schema, name, how, view_schema, view, definition in rows:
        if how != "view":
            continue
        if schema is None or name is None or view_schema is None or view is None:
            raise ValueError("the reach query returned a view without a name")
        if definition is None:
            raise ValueError(f"the database gave no definition for the view {view!r}")
        relation = qualified(schema, name)
        views.setdefault(relation, {})[qualified(view_schema, view)] = definition
    return views


def _add_run(
    functions: set[str],
    function_schema: str | None,
    function: str | None,
    expression: str | None,
    functions_in: Callable[[str], frozenset[str] | None],
) -> bool:
    """Adds what one row says is run: a function the catalog names (bare and qualified), or
    those an expression's SQL calls. False when the expression could not be analysed."""
    if function is not None:
        functions.update((function, f"{function_schema}.{function}"))
    elif expression is not None:
        called = functions_in(expression)
        if called is None:
            return False
        functions.update(called)
    return True


def functions_called(sql: str) -> frozenset[str] | None:
    """The functions an expression's or a view's SQL calls; None if it cannot be analysed."""
    analysis = analyze(sql, ("public",))
    if analysis.error is not None:
        return None
    return called_functions(analysis)


def string_literal(text: str) -> str:
    """A string constant that reads alike whatever standard_conforming_strings says (names
    with a backslash or a NUL are not askable: see columns.askable)."""
    return "'" + text.replace("'", "''") + "'"
