"""Masking end to end: what the agent and the analyst receive through the gateway.

Every value the client receives is scanned for the demo's raw emails, phone numbers and
IBANs; the masked forms are checked against what the methods promise (an email's domain
for the agent, keyed pseudonyms that repeat across sessions for the analyst).
"""

from __future__ import annotations

# ruff: noqa: F811 - the fixtures of test_session_attacks, imported, are redefined as arguments
import asyncio
import json
import re
from typing import Any

import asyncpg
import psycopg
import pytest
from compare import asyncpg_options
from gateway_fixtures import GatewayProcess
from test_session_attacks import (  # noqa: F401 - fixtures
    customer_emails,
    customer_names,
    governed,
    psycopg_connect,
    superuser,
)

from custos.masking.values import iban_valid

CONTACTS = "SELECT id, email, phone, iban, full_name FROM crm.customers ORDER BY id LIMIT 5"


@pytest.fixture(scope="module")
def personal(pg_dsn: str) -> frozenset[str]:
    """Every raw email, phone number and IBAN of the demo, and forms that carry them."""
    values: set[str] = set()
    with psycopg.connect(pg_dsn, dbname="custos_demo") as connection:
        rows = connection.execute("SELECT email, phone, iban FROM crm.customers").fetchall()
    for email, phone, iban in rows:
        for value in (email, phone, iban):
            if value:
                values |= {value, value.lower(), value[::-1], re.sub(r"\W", "", value)}
    return frozenset(values)


def leaked(rows: list[tuple[Any, ...]], personal: frozenset[str]) -> set[str]:
    text = " ".join(str(value) for row in rows for value in row)
    return {value for value in personal if len(value) > 6 and value in text}


def test_the_agent_reads_contact_details_partially(
    governed: GatewayProcess, superuser: psycopg.Connection, personal: frozenset[str]
) -> None:
    direct = superuser.execute(CONTACTS).fetchall()
    with psycopg_connect(governed) as agent:
        masked = agent.execute(CONTACTS).fetchall()
    assert not leaked(masked, personal)
    for (id_, email, phone, iban, name), raw in zip(masked, direct, strict=True):
        assert (id_, name) == (raw[0], raw[4])  # not personal for this rule: as they are
        assert email == "***@" + raw[1].partition("@")[2]
        assert phone[:3] == raw[2][:3]
        assert set(phone[3:]) <= {"*", " "}
        assert iban[:2] == raw[3][:2]
        assert iban[-4:] == raw[3].replace(" ", "")[-4:]


def test_a_star_masks_the_columns_it_stands_for(
    governed: GatewayProcess, personal: frozenset[str]
) -> None:
    with psycopg_connect(governed) as agent:
        cursor = agent.execute("SELECT * FROM crm.customers ORDER BY id LIMIT 5")
        names = [column.name for column in cursor.description or ()]
        rows = cursor.fetchall()
    assert not leaked(rows, personal)
    first = dict(zip(names, rows[0], strict=True))
    assert first["id"] == 1  # the catalog's columns place the masks: the others stay
    assert first["email"].startswith("***@")


def test_binary_results_are_masked_alike(
    governed: GatewayProcess, personal: frozenset[str]
) -> None:
    with psycopg_connect(governed) as agent:
        text = agent.execute(CONTACTS).fetchall()
        binary = agent.cursor(binary=True).execute(CONTACTS).fetchall()
    assert binary == text
    assert not leaked(binary, personal)


def test_asyncpg_reads_masked_values(governed: GatewayProcess, personal: frozenset[str]) -> None:
    async def read() -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(**asyncpg_options(governed, "gateway"))
        try:
            return [tuple(record) for record in await connection.fetch(CONTACTS)]
        finally:
            await connection.close()

    rows = asyncio.run(read())
    assert len(rows) == 5
    assert not leaked(rows, personal)


def test_the_analyst_reads_keyed_pseudonyms_that_repeat(
    governed: GatewayProcess, customer_names: frozenset[str], personal: frozenset[str]
) -> None:
    sql = "SELECT id, full_name, email, iban FROM crm.customers ORDER BY id LIMIT 20"
    with psycopg_connect(governed, role="analyst") as first:
        once = first.execute(sql).fetchall()
    with psycopg_connect(governed, role="analyst") as second:
        again = second.execute(sql).fetchall()
    assert once == again  # one key, one pseudonym: joins across sessions still work
    assert not leaked(once, personal)
    text = " ".join(str(value) for row in once for value in row)
    assert not [name for name in customer_names if name in text]
    for _, _, email, iban in once:
        assert re.fullmatch(r"[a-z0-9]{10}@[a-z0-9]{6}\.example", email)
        assert iban_valid(iban)


def test_an_error_quoting_a_masked_value_is_hidden(
    governed: GatewayProcess, customer_emails: frozenset[bytes]
) -> None:
    with psycopg_connect(governed) as agent, pytest.raises(psycopg.Error) as raised:
        agent.execute("SELECT email::int FROM crm.customers ORDER BY id LIMIT 1")
    error = raised.value
    assert error.sqlstate == "22P02"  # what went wrong is kept, not the value
    shown = " ".join(str(part) for part in (error, error.diag.message_detail) if part)
    assert not any(email.decode() in shown for email in customer_emails)
    assert "masked" in str(error)


def test_a_whole_row_is_masked_whole(governed: GatewayProcess, personal: frozenset[str]) -> None:
    with psycopg_connect(governed) as agent:
        rows = agent.execute(
            "SELECT row_to_json(c) FROM crm.customers c ORDER BY id LIMIT 5"
        ).fetchall()
    assert len(rows) == 5
    assert not leaked(rows, personal)


@pytest.mark.parametrize(
    "sql",
    [
        # A part kept of a computed value could be any part of the column.
        "SELECT 'x@' || replace(email, '@', '#'), reverse(email) FROM crm.customers"
        " ORDER BY id LIMIT 1",
        "SELECT translate(phone, '0123456789', 'abcdefghij') FROM crm.customers"
        " ORDER BY id LIMIT 1",
        "SELECT '------' || substr(iban, 1, 4), '------' || substr(iban, 5, 4) FROM crm.customers"
        " ORDER BY id LIMIT 1",
        # Free text has no format whose part identifies no one.
        "SELECT substr(body, 1), substr(body, 2) FROM crm.support_tickets ORDER BY id LIMIT 1",
    ],
)
def test_partial_keeps_no_part_of_a_computed_value(governed: GatewayProcess, sql: str) -> None:
    with psycopg_connect(governed) as agent:
        row = agent.execute(sql).fetchone()
    assert row is not None
    assert set(row) == {"[redacted]"}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT set_config('application_name', full_name, false), 1 FROM crm.customers"
        " ORDER BY id LIMIT 1",
        "SELECT set_config('custos.x', email, false) FROM crm.customers ORDER BY id LIMIT 1",
    ],
)
def test_a_masked_statement_may_not_keep_values_in_the_session(
    governed: GatewayProcess, customer_emails: frozenset[bytes], sql: str
) -> None:
    with psycopg_connect(governed, role="analyst") as analyst:
        before = analyst.info.parameter_status("application_name")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="masking cannot follow"):
            analyst.execute(sql)
        assert analyst.info.parameter_status("application_name") == before
        with pytest.raises(psycopg.Error):
            analyst.execute("SELECT current_setting('custos.x')")


def test_ticket_bodies_keep_their_words_and_lose_the_contact_details(
    governed: GatewayProcess, superuser: psycopg.Connection, personal: frozenset[str]
) -> None:
    sql = "SELECT id, body FROM crm.support_tickets ORDER BY id LIMIT 100"
    direct = dict(superuser.execute(sql).fetchall())
    with psycopg_connect(governed) as agent:
        masked = dict(agent.execute(sql).fetchall())
    assert not leaked(list(masked.items()), personal)
    assert leaked(list(direct.items()), personal), "directly, bodies quote contact details"
    # Content detection masks the values in place: the rest of each body is as it was.
    untouched = [id_ for id_, body in masked.items() if body == direct[id_]]
    assert len(untouched) < len(masked)
    assert all(body.split(" ")[0] == direct[id_].split(" ")[0] for id_, body in masked.items())


@pytest.mark.parametrize(
    "sql",
    [
        # Subquery and CTE columns PostgreSQL names by rules of its own (FigureColname).
        'SELECT email, phone, iban FROM (SELECT email COLLATE "C", phone COLLATE "C",'
        ' iban COLLATE "C" FROM crm.customers ORDER BY id LIMIT 3) s',
        'WITH s AS (SELECT email COLLATE "C" FROM crm.customers ORDER BY id LIMIT 3)'
        " SELECT email FROM s",
        "SELECT zz FROM (SELECT (SELECT email AS zz) FROM crm.customers ORDER BY id LIMIT 3) s",
        "SELECT nullif FROM (SELECT NULLIF(email, '') FROM crm.customers ORDER BY id LIMIT 3) s",
        "SELECT greatest FROM (SELECT GREATEST(phone, '') FROM crm.customers ORDER BY id"
        " LIMIT 3) s",
        "SELECT least FROM (SELECT LEAST(iban, 'ZZ') FROM crm.customers ORDER BY id LIMIT 3) s",
        "SELECT email FROM (SELECT (c).email FROM (SELECT c FROM crm.customers c ORDER BY id"
        " LIMIT 3) x) y",
        "SELECT xmlelement FROM (SELECT xmlelement(name a, email) FROM crm.customers"
        " ORDER BY id LIMIT 3) s",
        'SELECT "array" FROM (SELECT (ARRAY[email])[1] FROM crm.customers ORDER BY id LIMIT 3) s',
        # Named after the ELSE, or after the field before a subscript, by PostgreSQL.
        "SELECT email FROM (SELECT CASE WHEN false THEN NULL ELSE email END FROM crm.customers"
        " ORDER BY id LIMIT 3) s",
        "WITH s AS (SELECT CASE WHEN false THEN '' ELSE iban END FROM crm.customers"
        " ORDER BY id LIMIT 3) SELECT iban FROM s",
        "SELECT lower FROM (SELECT CASE WHEN false THEN NULL ELSE lower(email) END"
        " FROM crm.customers ORDER BY id LIMIT 3) s",
        "SELECT body FROM (SELECT CASE WHEN false THEN '' ELSE body END FROM crm.support_tickets"
        " ORDER BY id LIMIT 3) s",
        "SELECT text FROM (SELECT CASE WHEN true THEN phone END::text FROM crm.customers"
        " ORDER BY id LIMIT 3) s",
        "SELECT proargnames FROM (SELECT (jsonb_populate_record(NULL::pg_catalog.pg_proc,"
        " jsonb_build_object('proargnames', ARRAY[email]))).proargnames[1] FROM crm.customers"
        " ORDER BY id LIMIT 3) s",
        # A name the walk cannot tell may be any name: the column stays masked.
        "SELECT s.zz FROM (SELECT (SELECT 'x@' || replace(email, '@', '#')) FROM crm.customers"
        " ORDER BY id LIMIT 3) s(zz)",
        "SELECT s.translate FROM (SELECT translate(body, '@0123456789', '#ABCDEFGHIJ')"
        ' COLLATE "C" FROM crm.support_tickets ORDER BY id LIMIT 3) s',
    ],
)
def test_columns_named_by_postgresql_stay_masked(
    governed: GatewayProcess, personal: frozenset[str], sql: str
) -> None:
    with psycopg_connect(governed) as agent:
        rows = agent.execute(f"{sql} LIMIT 3").fetchall()
    assert rows
    assert not leaked(rows, personal)
    # None is the computed value kept as it is, partially or whole.
    text = " ".join(str(value) for row in rows for value in row)
    assert "#" not in text.replace("[redacted]", "")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT attname, histogram_bounds::text, most_common_vals::text FROM pg_stats"
        " WHERE schemaname = 'crm' AND tablename = 'customers'",
        "SELECT x FROM (SELECT histogram_bounds AS x FROM pg_stats WHERE attname = 'phone') s",
        "SELECT histogram_bounds::text FROM pg_catalog.pg_stats"
        " WHERE tablename = 'support_tickets' AND attname = 'body'",
    ],
)
def test_the_planners_statistics_are_masked_whole(
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    personal: frozenset[str],
    customer_names: frozenset[str],
    sql: str,
) -> None:
    superuser.execute("ANALYZE crm.customers, crm.support_tickets")
    assert leaked(superuser.execute(sql).fetchall(), personal), "directly, sample values"
    with psycopg_connect(governed, role="analyst") as analyst:
        rows = analyst.execute(sql).fetchall()
    assert not leaked(rows, personal)
    text = " ".join(str(value) for row in rows for value in row)
    assert not [name for name in customer_names if name in text]


@pytest.mark.parametrize(
    ("role", "sql"),
    [
        # Spelled out one character a row: the name only picks which rows survive.
        (
            "analyst",
            "SELECT c.id, string_agg(chr(n), '' ORDER BY p) FROM crm.customers c,"
            " generate_series(1, 40) p, generate_series(32, 126) n WHERE c.id < 3"
            " AND ascii(substr(c.full_name, p, 1)) = n GROUP BY c.id ORDER BY c.id LIMIT 2",
        ),
        (
            "analyst",
            "SELECT c.id, string_agg(chr(n), '' ORDER BY p) FROM crm.customers c,"
            " generate_series(1, 40) p, generate_series(32, 126) n WHERE c.id < 3"
            " AND ascii(substr(c.email, p, 1)) = n GROUP BY c.id ORDER BY c.id LIMIT 2",
        ),
        # A dictionary of candidates joined on the column: the match is the value.
        (
            "agent",
            "SELECT x.g FROM crm.customers c JOIN (SELECT '+44 7700 ' || n::text AS g"
            " FROM generate_series(900000, 900999) n) x ON c.phone = x.g WHERE c.id = 1 LIMIT 1",
        ),
        (
            "agent",
            "SELECT x.g FROM (SELECT '+44 7700 ' || n::text AS g FROM generate_series(900000,"
            " 900999) n) x WHERE x.g IN (SELECT phone FROM crm.customers WHERE id < 4 LIMIT 3)"
            " LIMIT 3",
        ),
    ],
)
def test_values_carried_by_the_rows_a_test_picks_are_masked(
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    personal: frozenset[str],
    customer_names: frozenset[str],
    role: str,
    sql: str,
) -> None:
    direct = superuser.execute(sql).fetchall()
    text = " ".join(str(value) for row in direct for value in row)
    assert leaked(direct, personal) or [n for n in customer_names if n in text], "directly"
    with psycopg_connect(governed, role=role) as session:
        rows = session.execute(sql).fetchall()
    assert rows
    assert not leaked(rows, personal)
    masked_text = " ".join(str(value) for row in rows for value in row)
    assert not [name for name in customer_names if name in masked_text]


PHONE_GUESSES = "(SELECT '+44 7700 ' || n::text AS g FROM generate_series(900000, 900999) n) x"


@pytest.mark.parametrize(
    ("role", "sql"),
    [
        # Made distinct with a guess: one row where they are equal, two where not.
        (
            "agent",
            f"SELECT x.g FROM {PHONE_GUESSES}, LATERAL (SELECT count(*) AS d FROM (SELECT phone"
            " FROM crm.customers WHERE id = 1 UNION SELECT x.g || '') q) s WHERE s.d = 1 LIMIT 1",
        ),
        (
            "agent",
            f"SELECT x.g FROM {PHONE_GUESSES}, LATERAL (SELECT count(*) AS d FROM (SELECT v FROM"
            " ((SELECT phone AS v FROM crm.customers WHERE id = 1 LIMIT 1) UNION ALL"
            " SELECT x.g || '') q GROUP BY v) r) s WHERE s.d = 1 LIMIT 1",
        ),
        (
            "agent",
            f"SELECT x.g FROM {PHONE_GUESSES}, LATERAL (SELECT count(*) AS d FROM (SELECT DISTINCT"
            " v FROM ((SELECT phone AS v FROM crm.customers WHERE id = 1 LIMIT 1) UNION ALL"
            " SELECT x.g || '') q) r) s WHERE s.d = 1 LIMIT 1",
        ),
        (
            "analyst",
            f"SELECT x.g FROM {PHONE_GUESSES}, LATERAL (SELECT count(*) AS d FROM (SELECT phone"
            " FROM crm.customers WHERE id = 1 UNION SELECT x.g || '') q) s WHERE s.d = 1 LIMIT 1",
        ),
    ],
)
def test_values_collapsed_with_a_guess_are_masked(
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    personal: frozenset[str],
    role: str,
    sql: str,
) -> None:
    assert leaked(superuser.execute(sql).fetchall(), personal), "directly, the phone"
    with psycopg_connect(governed, role=role) as session:
        try:
            rows = session.execute(sql).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            rows = []  # refused (the agent's page or search rules): nothing comes back
    assert not leaked(rows, personal)


def _literal_guesses() -> str:
    """Every demo phone number as a literal test, ORed: a thousand guesses in one."""
    terms = " OR ".join(
        f"(v.g = '+44 7700 {n}' AND c.phone = '+44 7700 {n}')" for n in range(900000, 901000)
    )
    values = ", ".join(f"('+44 7700 {n}')" for n in range(900000, 901000))
    return (
        "SELECT c.id, v.g FROM (SELECT id, phone FROM crm.customers ORDER BY id LIMIT 5) c,"
        f" (VALUES {values}) v(g) WHERE {terms} LIMIT 5"
    )


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_values_found_by_literal_guesses_are_masked(
    governed: GatewayProcess, superuser: psycopg.Connection, personal: frozenset[str], role: str
) -> None:
    sql = _literal_guesses()
    assert leaked(superuser.execute(sql).fetchall(), personal), "directly, five phones"
    with psycopg_connect(governed, role=role) as session:
        try:
            rows = session.execute(sql).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            rows = []
    assert not leaked(rows, personal)


def test_each_masked_statement_is_logged_with_its_counts_and_no_values(
    governed: GatewayProcess, personal: frozenset[str]
) -> None:
    seven = "SELECT id, email, phone, iban FROM crm.customers ORDER BY id LIMIT 7"
    with psycopg_connect(governed) as agent:
        assert len(agent.execute(seven).fetchall()) == 7
        # A cursor's rows come in several fetches, each a statement with its own counts.
        with agent.transaction(), agent.cursor(name="in_threes") as cursor:
            cursor.itersize = 3
            assert len(list(cursor.execute(seven.replace("7", "8")))) == 8
    log = governed.log()
    assert "masked 21 values: 0.1:email:partial=7 0.2:phone:partial=7 0.3:iban:partial=7" in log
    for fetched in (3, 3, 2):
        counts = f"0.1:email:partial={fetched} 0.2:phone:partial={fetched} 0.3:iban:partial="
        assert f"masked {3 * fetched} values: {counts}{fetched}" in log
    assert not {value for value in personal if len(value) > 6 and value in log}


TYPED = (
    "SELECT id, length(email) AS email_length,"
    " (ARRAY[1, NULL])[(ascii(email) & 1) + 1] AS bit, ARRAY[email, NULL] AS emails,"
    " email::varchar(200) AS email_varchar, to_jsonb(email) AS email_jsonb,"
    " round(0::numeric, ascii(substr(email, 2, 1))) AS scaled,"
    " array_fill(0, ARRAY[1], ARRAY[ascii(email)]) AS bounded"
    " FROM crm.customers c ORDER BY id LIMIT 20"
)


@pytest.mark.parametrize("client", ["psycopg text", "psycopg binary", "asyncpg"])
def test_computed_values_become_one_placeholder_of_their_type_nulls_too(
    governed: GatewayProcess, personal: frozenset[str], client: str
) -> None:
    # A value the statement computes can carry its source in its form: an array's bounds, a
    # number's scale or digit count, infinity, or whether it is NULL at all. So every value
    # of such a column, NULL too, becomes one placeholder valid for its type.
    if client == "asyncpg":

        async def read() -> list[tuple[Any, ...]]:
            options = asyncpg_options(governed, "gateway")
            token = governed.token("analyst", "analyst-asyncpg", groups=["analysts"])
            connection = await asyncpg.connect(**{**options, "user": "analyst", "password": token})
            try:
                await connection.set_type_codec(
                    "jsonb", encoder=str, decoder=json.loads, schema="pg_catalog"
                )
                return [tuple(record) for record in await connection.fetch(TYPED)]
            finally:
                await connection.close()

        rows = asyncio.run(read())
    else:
        with psycopg_connect(governed, role="analyst") as analyst:
            cursor = analyst.cursor(binary=client.endswith("binary"))
            rows = cursor.execute(TYPED).fetchall()
    assert len(rows) == 20
    assert not leaked(rows, personal)
    assert [row[0] for row in rows] == list(range(1, 21))  # not personal: as it is
    placeholders = {row[1:] for row in rows}
    assert placeholders == {(0, 0, None, "[redacted]", "[redacted]", 0, None)}


def test_a_row_as_json_keeps_its_keys_and_masks_the_personal_ones(
    governed: GatewayProcess, superuser: psycopg.Connection, personal: frozenset[str]
) -> None:
    sql = "SELECT row_to_json(c) AS j FROM crm.customers c ORDER BY id LIMIT 5"
    direct = [row[0] for row in superuser.execute(sql)]
    with psycopg_connect(governed) as agent:
        masked = [row[0] for row in agent.execute(sql)]
    assert not leaked([(json.dumps(document),) for document in masked], personal)
    for document, raw in zip(masked, direct, strict=True):
        assert document.keys() == raw.keys()
        assert document["email"] == "***@" + raw["email"].partition("@")[2]
        assert document["iban"][:2] == raw["iban"][:2]
        personal_keys = {"email", "phone", "iban"}  # what the agent sees masked
        assert {k: v for k, v in document.items() if k not in personal_keys} == {
            k: v for k, v in raw.items() if k not in personal_keys
        }


@pytest.mark.parametrize("binary", [False, True])
def test_built_json_objects_mask_their_personal_keys_like_columns(
    governed: GatewayProcess, personal: frozenset[str], binary: bool
) -> None:
    sql = (
        "SELECT id, email, full_name, jsonb_build_object('id', id, 'e', email, 'n', full_name,"
        " 'upper', upper(email)) AS built FROM crm.customers ORDER BY id LIMIT 5"
    )
    aggregated = (
        "SELECT json_agg(s ORDER BY s.id) FROM"
        " (SELECT id, email FROM crm.customers ORDER BY id LIMIT 5) s"
    )
    with psycopg_connect(governed, role="analyst") as analyst:
        rows = analyst.cursor(binary=binary).execute(sql).fetchall()
        (objects,) = analyst.cursor(binary=binary).execute(aggregated).fetchone()
    assert not leaked([(*row[:3], json.dumps(row[3])) for row in rows], personal)
    assert not leaked([(json.dumps(objects),)], personal)
    for id_, email, name, built in rows:
        assert built.keys() == {"id", "e", "n", "upper"}
        assert built["id"] == id_  # not personal: as it is
        assert (built["e"], built["n"]) == (email, name)  # the columns' own pseudonyms
        assert built["upper"] not in (email, None)  # computed: its own pseudonym
    assert objects == [{"id": id_, "email": email} for id_, email, *_ in rows]


def test_a_json_value_that_is_not_the_traced_object_is_masked_whole(
    governed: GatewayProcess, personal: frozenset[str]
) -> None:
    # `c` here is the subquery's column, not its row: the value is an email as JSON.
    sql = "SELECT to_jsonb(c) AS j FROM (SELECT email AS c FROM crm.customers) c LIMIT 3"
    with psycopg_connect(governed) as agent:
        rows = agent.execute(sql).fetchall()
    assert rows == [("[redacted]",)] * 3
    assert not leaked(rows, personal)
