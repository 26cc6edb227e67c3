"""Masking attack round 31: views (other schemas, materialized, security_barrier, column
lists, views over views with renames, a DBA's uncatalogued view), XML functions, composites,
set-returning functions, type tricks, server-side echoes (DO, errors, EXPLAIN, SHOW,
NOTIFY, pg_stat_activity through its functions), the extended protocol (Describe, mixed
result formats, portals read in parts, parameters).

Finding, closed: a relation the catalog cache remembered as absent was read in clear once
someone created it (a view, materialized view or function over crm.customers), until the
entry expired: the agent itself could prime the entry by naming the relation first. Absence
now holds only for the statement whose own catalog read found it (ColumnCatalog._trusted).

Each probe asserts the secure behaviour, so a probe that finds a hole fails: nothing the
client receives (values, errors, notices) holds a demo email, phone or IBAN (or, for the
analyst, a name) as stored, lower-cased, reversed, without punctuation or in base64. A
refusal by policy (42501) passes."""

from __future__ import annotations

# ruff: noqa: F811, E501 - fixtures redefined as arguments; the attacks' SQL kept as sent
import base64
import itertools
import struct

import psycopg
import pytest
from test_masking_attacks_round8 import blob, raw_session
from test_masking_gateway import personal  # noqa: F401
from test_session_attacks import (  # noqa: F401
    SYNC,
    customer_names,
    execute,
    governed,
    login,
    parse,
    psycopg_connect,
    superuser,
)
from wire import frontend_message, query

_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_counter)}"


def forms(personal: frozenset[str], names: frozenset[str], role: str) -> set[bytes]:
    """Every personal value (with its base64 and hex) the role must not receive."""
    values = set(personal)
    if role == "analyst":
        values |= {name for name in names if len(name) > 6}
        values |= {name.lower() for name in names if len(name) > 6}
    out = {value.encode() for value in values if len(value) > 6}
    out |= {base64.b64encode(value) for value in list(out)}
    out |= {value.hex().encode() for value in list(out)}
    return out


def leaked_bytes(data: bytes, personal, names, role) -> set[bytes]:
    low = data.lower()
    return {form for form in forms(personal, names, role) if form in data or form.lower() in low}


def received(governed, role: str, sqls: list[str]) -> bytes:
    """Every byte the client received for these statements, one simple query each."""
    got = raw_session(governed, role, [query(sql) for sql in sqls])
    return blob(got)


def rows_or_error(governed, role: str, sql: str):
    with psycopg_connect(governed, role) as connection:
        try:
            return connection.execute(sql).fetchall()
        except psycopg.Error as error:
            return f"ERROR {error.sqlstate}: {error}"


# === finding 1: a relation remembered as absent is read in clear once created ================
# custos/upstream/columns.py keeps "absent" for column_cache_seconds (300 s) so that refusals
# naming a missing relation do not ask again; but an absent relation is also left out of the
# views the statement is read through: once a DBA (or a migration, run directly in the
# database) creates a view of that name over crm.customers, the gateway still reads it as a
# relation of nothing: no lineage, no mask rule fires, the decision is a plain allow, and
# every email, phone and IBAN comes out raw. The agent primes the entry itself by naming the
# relation before it exists (an AI agent checking whether the view of its own migration is
# there yet does exactly this). The README's known gap names views *replaced* in the
# database; this is a view *created* after an agent's statement, and a `*` over it is not
# kept as a `*` of unknown width (README: "so a `*` over them stays `*`").

ABSENT_READS = ["SELECT x FROM crm.{name} LIMIT 3", "SELECT * FROM crm.{name} LIMIT 3"]


@pytest.mark.parametrize("role", ["agent", "analyst"])
@pytest.mark.parametrize("kind", ["VIEW", "MATERIALIZED VIEW"])
@pytest.mark.parametrize("read", ABSENT_READS, ids=["column", "star"])
def test_relation_remembered_absent_then_created_reads_raw(
    governed, superuser, personal, customer_names, role, kind, read
):
    name = unique("r31_absent")
    sql = read.format(name=name)
    before = rows_or_error(governed, role, sql)  # primes the cache: the relation is absent
    assert isinstance(before, str), before
    assert "42P01" in before
    superuser.execute(
        f"CREATE {kind} crm.{name} AS SELECT id, email AS x, phone AS y, iban AS z,"
        f" full_name AS n FROM crm.customers"
    )
    superuser.execute(f"GRANT SELECT ON crm.{name} TO PUBLIC")
    try:
        # leaks: the first customers' raw emails, phones, IBANs (and names to the analyst)
        data = received(governed, role, [sql])
        assert not leaked_bytes(data, personal, customer_names, role), data[:600]
    finally:
        superuser.execute(f"DROP {kind} crm.{name}")


def test_function_remembered_absent_then_created_reads_raw(
    governed, superuser, personal, customer_names
):
    # the same for a function's body: the analyst calls crm.f before it exists, a DBA creates
    # it reading email; its body is remembered as reaching nothing, so its value is not masked
    name = unique("r31_absent_fn")
    sql = f"SELECT crm.{name}(id) AS v FROM crm.customers ORDER BY id LIMIT 3"
    before = rows_or_error(governed, "analyst", sql)
    assert isinstance(before, str), before
    assert "42883" in before
    superuser.execute(
        f"CREATE FUNCTION crm.{name}(bigint) RETURNS text LANGUAGE sql STABLE"
        " AS 'SELECT email FROM crm.customers WHERE id = $1'"
    )
    superuser.execute(f"GRANT EXECUTE ON FUNCTION crm.{name}(bigint) TO PUBLIC")
    try:
        # leaks: the analyst reads the first customers' raw emails
        data = received(governed, "analyst", [sql])
        assert not leaked_bytes(data, personal, customer_names, "analyst"), data[:600]
    finally:
        superuser.execute(f"DROP FUNCTION crm.{name}(bigint)")


# === documented known gap, kept as evidence: a view replaced in the database =================
# README (views): "a view or function replaced directly in the database (not through the
# gateway) is read as it was until the catalog entry expires". Same names, same types, so the
# RowDescription check passes: city becomes email under the same column name.


@pytest.mark.xfail(strict=True, reason="documented known gap: views replaced in the database")
def test_view_replaced_in_the_database_is_read_as_it_was(
    governed, superuser, personal, customer_names
):
    name = unique("r31_replaced")
    superuser.execute(f"CREATE VIEW crm.{name} AS SELECT id, city AS info FROM crm.customers")
    superuser.execute(f"GRANT SELECT ON crm.{name} TO PUBLIC")
    sql = f"SELECT id, info FROM crm.{name} ORDER BY id LIMIT 3"
    try:
        assert not isinstance(rows_or_error(governed, "agent", sql), str)
        superuser.execute(
            f"CREATE OR REPLACE VIEW crm.{name} AS SELECT id, email AS info FROM crm.customers"
        )
        data = received(governed, "agent", [sql])
        assert not leaked_bytes(data, personal, customer_names, "agent"), data[:600]
    finally:
        superuser.execute(f"DROP VIEW crm.{name}")


# === held: views the catalog does not list, followed through their definitions ============

VIEWS = {
    "crm.r31_mv": (
        "MATERIALIZED VIEW",
        "SELECT id, email AS contact, phone AS p, iban AS i, full_name AS n FROM crm.customers",
    ),
    "crm.r31_sb": ("VIEW", "SELECT id, email AS e, iban AS i, full_name AS n FROM crm.customers"),
    "crm.r31_cols": ("VIEW", "SELECT id, email, phone, full_name FROM crm.customers"),
    "crm.r31_vv": ("VIEW", "SELECT b, d FROM crm.r31_cols"),
    "crm.r31_vv2": ("VIEW", "SELECT a AS b, b AS a, d AS c FROM crm.r31_cols"),
    "r31_other.customers": ("VIEW", "SELECT * FROM crm.customers"),
    "r31_other.contacts": (
        "VIEW",
        "SELECT id, phone AS email, email AS note, full_name FROM crm.customers",
    ),
    "crm.r31_tk": ("VIEW", "SELECT id, body, subject FROM crm.support_tickets"),
    "crm.r31_tkm": (
        "MATERIALIZED VIEW",
        "SELECT id, upper(body) AS b, body FROM crm.support_tickets",
    ),
    "crm.r31_partial": ("VIEW", "SELECT email, phone AS b, iban, full_name FROM crm.customers"),
    "crm.r31_starlist": ("VIEW", "SELECT * FROM crm.customers"),
    "crm.r31_swap": (
        "VIEW",
        "SELECT id, full_name AS email, email AS full_name, city AS phone, phone AS city FROM crm.customers",
    ),
    "crm.r31_xml": (
        "VIEW",
        "SELECT id, xmlforest(email, phone) AS x, to_jsonb(c) AS j FROM crm.customers c",
    ),
}
COLUMN_LISTS = {
    "crm.r31_partial": "(a)",
    "crm.r31_starlist": "(note, contact)",
    "crm.r31_cols": "(a, b, c, d)",
    "crm.r31_vv": "(x, y)",
    "crm.r31_tk": "(i, note, s)",
}
OPTIONS = {"crm.r31_sb": " WITH (security_barrier)"}


@pytest.fixture(scope="module")
def dba_views(governed, pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as superuser:
        superuser.execute("CREATE SCHEMA r31_other")
        superuser.execute("GRANT USAGE ON SCHEMA r31_other TO PUBLIC")
        for name, (kind, body) in VIEWS.items():
            superuser.execute(
                f"CREATE {kind} {name}{COLUMN_LISTS.get(name, '')}{OPTIONS.get(name, '')} AS {body}"
            )
            superuser.execute(f"GRANT SELECT ON {name} TO PUBLIC")
        yield
        for name, (kind, _) in reversed(VIEWS.items()):
            superuser.execute(f"DROP {kind} {name}")
        superuser.execute("DROP SCHEMA r31_other")


HELD_VIEWS = [
    "SELECT * FROM crm.r31_mv ORDER BY id LIMIT 3",
    "SELECT contact, p, i, n FROM crm.r31_mv LIMIT 3",
    "SELECT * FROM crm.r31_sb ORDER BY id LIMIT 3",
    "SELECT e, i FROM crm.r31_sb WHERE id < 5 LIMIT 3",
    "SELECT * FROM crm.r31_cols ORDER BY a LIMIT 3",
    "SELECT b AS id, d FROM crm.r31_cols LIMIT 3",
    "SELECT * FROM crm.r31_vv LIMIT 3",
    "SELECT x, y FROM crm.r31_vv AS v(x, y) LIMIT 3",
    "SELECT * FROM crm.r31_vv2 LIMIT 3",
    "SELECT b, a, c FROM crm.r31_vv2 LIMIT 3",
    "SELECT email, phone, iban FROM r31_other.customers LIMIT 3",
    "SELECT * FROM r31_other.contacts LIMIT 3",
    "SET search_path = r31_other, crm",
    "SELECT email, note FROM contacts LIMIT 3",
    "SELECT row_to_json(v) FROM crm.r31_vv2 v LIMIT 3",
    "SELECT xmlelement(name r, xmlattributes(a AS a), b) FROM crm.r31_vv2 LIMIT 3",
    "SELECT note FROM crm.r31_tk ORDER BY i LIMIT 20",
    "SELECT b, body FROM crm.r31_tkm ORDER BY id LIMIT 20",
    "SELECT x, j FROM crm.r31_xml ORDER BY id LIMIT 3",
    "SELECT a, b, iban, full_name FROM crm.r31_partial LIMIT 3",
    "SELECT * FROM crm.r31_partial LIMIT 3",
    "SELECT note, contact, email, phone, iban FROM crm.r31_starlist LIMIT 3",
    "SELECT * FROM crm.r31_starlist LIMIT 3",
    "SELECT email, full_name, phone, city FROM crm.r31_swap ORDER BY id LIMIT 3",
    "SELECT row_to_json(s) FROM crm.r31_swap s ORDER BY id LIMIT 3",
    "SELECT x::text, j->>'email' FROM crm.r31_xml ORDER BY id LIMIT 3",
]


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_held_dba_views(governed, dba_views, personal, customer_names, role):
    data = received(governed, role, HELD_VIEWS)
    assert b"D" in data  # some rows came back
    assert not leaked_bytes(data, personal, customer_names, role), data[:600]


# === held: XML, composites, set-returning functions, type tricks, server-side echoes =======

HELD = [
    # XML
    "SELECT query_to_xml('SELECT email, phone, iban, full_name FROM crm.customers LIMIT 2', true, false, '')",
    "SELECT table_to_xml('crm.customers', true, false, '')",
    "SELECT xmlelement(name x, email) FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT xmlforest(email, phone, iban, full_name) FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT xmlagg(xmlelement(name e, email)) FROM (SELECT email FROM crm.customers ORDER BY id LIMIT 2) s",
    "SELECT xpath('/x/text()', xmlelement(name x, email)) FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT (xpath('/x/text()', xmlelement(name x, email)))[1]::text FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT xmlparse(document email) FROM crm.customers LIMIT 1",
    "SELECT xmlelement(name t, body) FROM crm.support_tickets ORDER BY id LIMIT 10",
    # composites
    "SELECT ROW(c.*) FROM crm.customers c ORDER BY id LIMIT 2",
    "SELECT c::text FROM crm.customers c ORDER BY id LIMIT 2",
    "SELECT ARRAY[ROW(email, phone)] FROM crm.customers c ORDER BY id LIMIT 2",
    "SELECT array_agg(c) FROM (SELECT * FROM crm.customers ORDER BY id LIMIT 2) c",
    "SELECT to_jsonb(ROW(email, phone)) FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT row_to_json(ROW(email)) FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT json_object_agg(email, phone) FROM (SELECT * FROM crm.customers ORDER BY id LIMIT 2) c",
    "SELECT jsonb_path_query(to_jsonb(c), '$.*') FROM crm.customers c ORDER BY id LIMIT 2",
    "SELECT to_jsonb(c) ->> 'email', to_jsonb(c) - 'id' FROM crm.customers c ORDER BY id LIMIT 2",
    "SELECT jsonb_set(to_jsonb(c), '{id}', to_jsonb(c.email)) FROM crm.customers c ORDER BY id LIMIT 2",
    "SELECT jsonb_build_object('x', jsonb_build_object('e', email)) FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT row_to_json(s) FROM (SELECT email AS id, id AS email FROM crm.customers ORDER BY id LIMIT 2) s",
    'SELECT row_to_json(s) FROM (SELECT email AS "a""b", phone AS "a\\b" FROM crm.customers ORDER BY id LIMIT 2) s',
    # set-returning functions
    "SELECT unnest(array[email, phone]) FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT regexp_matches(email, '.*') FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT string_to_table(email, '@') FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT j.* FROM crm.customers c, json_each_text(row_to_json(c)) j ORDER BY id LIMIT 12",
    "SELECT * FROM crm.customers c, json_each_text(row_to_json(c)) ORDER BY id LIMIT 12",
    "SELECT r.* FROM crm.customers c, jsonb_to_record(to_jsonb(c)) AS r(email text, phone text) ORDER BY id LIMIT 2",
    "SELECT generate_series(1, 2), email FROM crm.customers ORDER BY id LIMIT 2",
    # type tricks
    "SELECT convert_to(email, 'UTF8'), email::bytea, decode(replace(email, '@', 'A'), 'escape') FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT ascii(email), to_tsvector('simple', email), email::tsvector FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT ('(' || regexp_replace(phone, '\\D', '', 'g') || ',1)')::point FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT substr(regexp_replace(phone, '\\D', '', 'g'), 3)::money FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT (regexp_replace(phone, '\\D', '', 'g') || ' seconds')::interval FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT regexp_replace(phone, '\\D', '', 'g')::bigint::bit(64) FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT ('1.' || regexp_replace(phone, '\\D', '', 'g'))::numeric::text FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT lpad(regexp_replace(phone, '\\D', '', 'g'), 32, '0')::uuid FROM crm.customers ORDER BY id LIMIT 2",
    'SELECT string_to_array(email, NULL)::"char"[], email::name, email::char(60), email::xml FROM crm.customers ORDER BY id LIMIT 2',
    "SELECT regexp_split_to_array(email, ''), ARRAY[email]::text FROM crm.customers ORDER BY id LIMIT 2",
    "SELECT body::bytea, body::name, ARRAY[body] FROM crm.support_tickets ORDER BY id LIMIT 10",
    # errors and echoes
    "SELECT CAST(email AS int) FROM crm.customers LIMIT 1",
    "SELECT to_date(email, 'YYYY') FROM crm.customers LIMIT 1",
    "SELECT email::regclass FROM crm.customers LIMIT 1",
    "SELECT email::json FROM crm.customers LIMIT 1",
    "SELECT current_setting(email) FROM crm.customers LIMIT 1",
    "SELECT current_setting(email, true) FROM crm.customers LIMIT 1",
    "SELECT jsonb_path_query('{}'::jsonb, ('$.' || email)::jsonpath) FROM crm.customers LIMIT 1",
    "SELECT 1 FROM crm.customers WHERE id = 1 AND iban::int = 0 LIMIT 1",
    "SELECT pg_notify('c', email) FROM crm.customers LIMIT 1",
    "SELECT set_config('application_name', email, false) FROM crm.customers LIMIT 1",
    "DO $$BEGIN RAISE NOTICE '%', (SELECT email FROM crm.customers LIMIT 1); END$$",
    "EXPLAIN (VERBOSE, ANALYZE) SELECT email FROM crm.customers WHERE id = 1",
    "EXPLAIN (VERBOSE) SELECT email FROM crm.customers WHERE email = 'x' LIMIT 1",
    "EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) SELECT email::int FROM crm.customers LIMIT 1",
    "SELECT query FROM pg_stat_get_activity(NULL)",
    "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
    "SELECT query FROM pg_stat_activity",
]


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_held(governed, personal, customer_names, role):
    # a DBA session through the gateway whose last statement quotes a customer's email, for
    # the pg_stat_activity probes
    with psycopg_connect(governed, "dba") as dba:
        email = personal and sorted(v for v in personal if "@" in v and v == v.lower())[0]
        dba.execute("SELECT id FROM crm.customers WHERE email = %s", [email]).fetchall()
        data = received(governed, role, HELD)
    assert not leaked_bytes(data, personal, customer_names, role), data[:600]


# === held: the extended protocol =============================================================

C = "SELECT id, email, phone, iban, full_name FROM crm.customers ORDER BY id LIMIT 6"


def describe(kind: bytes, name: str) -> bytes:
    return frontend_message(b"D", kind + name.encode() + b"\x00")


def bind_full(
    portal: str,
    statement: str,
    params: tuple[bytes | None, ...] = (),
    param_formats: tuple[int, ...] = (),
    formats: tuple[int, ...] = (),
) -> bytes:
    body = portal.encode() + b"\x00" + statement.encode() + b"\x00"
    body += struct.pack("!h", len(param_formats)) + b"".join(
        struct.pack("!h", f) for f in param_formats
    )
    body += struct.pack("!h", len(params))
    for value in params:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    body += struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    return frontend_message(b"B", body)


PROTOCOL = {
    "describe-mixed-formats-in-parts": [
        parse("s", C)
        + describe(b"S", "s")
        + bind_full("p", "s", formats=(0, 1, 0, 1, 1))
        + describe(b"P", "p")
        + execute("p", 2)
        + execute("p", 2)
        + execute("p", 0)
        + SYNC
    ],
    "all-binary-then-text": [
        parse("s", C) + bind_full("p", "s", formats=(1,)) + execute("p", 3) + SYNC,
        parse("t", C) + bind_full("q", "t", formats=(0,)) + execute("q", 3) + SYNC,
    ],
    "binary-types": [
        parse(
            "s",
            "SELECT email::bytea, email::xml, to_jsonb(email), ARRAY[phone], ROW(iban),"
            " email::name, to_jsonb(c), row_to_json(c) FROM crm.customers c ORDER BY id LIMIT 3",
        )
        + bind_full("p", "s", formats=(1,))
        + execute("p", 1)
        + execute("p", 0)
        + SYNC
    ],
    "parameters-into-expressions": [
        parse(
            "s",
            "SELECT $1::text || email, CASE WHEN $2::bool THEN phone ELSE city END,"
            " (ARRAY[city, iban])[$3::int] FROM crm.customers WHERE id < $4::int ORDER BY id LIMIT 3",
        )
        + bind_full("p", "s", params=(b"x", b"t", b"2", b"5"))
        + execute("p")
        + SYNC
    ],
    "binary-parameters": [
        parse(
            "s",
            "SELECT substr(email, $1), overlay(phone placing '' from $1 for 0)"
            " FROM crm.customers ORDER BY id LIMIT 3",
            (23,),
        )
        + bind_full("p", "s", params=(struct.pack("!i", 1),), param_formats=(1,), formats=(0, 1))
        + execute("p")
        + SYNC
    ],
    "unnamed-reused": [
        parse("", "SELECT id, city FROM crm.customers ORDER BY id LIMIT 3")
        + describe(b"S", "")
        + parse("", C)
        + bind_full("", "", formats=(1, 0, 1, 0, 1))
        + execute("", 1)
        + SYNC
    ],
    "xml-cursor": [
        query("BEGIN"),
        query(f"DECLARE c CURSOR FOR {C}"),
        query("SELECT cursor_to_xml('c', 2, false, false, '')"),
        query("ROLLBACK"),
        query("BEGIN"),
        query(f"DECLARE c CURSOR FOR {C}"),
        query("FETCH 2 FROM c"),
        query("COMMIT"),
    ],
}


@pytest.mark.parametrize("role", ["agent", "analyst"])
@pytest.mark.parametrize("case", list(PROTOCOL))
def test_held_protocol(governed, personal, customer_names, role, case):
    got = raw_session(governed, role, PROTOCOL[case])
    data = blob(got)
    assert not leaked_bytes(data, personal, customer_names, role), data[:600]
