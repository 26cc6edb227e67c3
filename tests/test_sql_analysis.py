"""SQL analysis: each case is a query string (and search path) with the facts it must give.

A case lists only the fields that matter for it. `reads` checks a subset of columns_read
(the analysis may over-approximate); every other key is compared exactly with the field of the
same name on the chosen statement.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from custos.sql.analysis import analyze
from custos.sql.cache import AnalysisCache, estimated_bytes
from custos.sql.facts import (
    ALL_COLUMNS,
    Analysis,
    OutputColumn,
    ParameterRef,
    PatternMatch,
    StatementFacts,
    ValueCopy,
)

ALL = ALL_COLUMNS
CUSTOMERS = "crm.customers"
ORDERS = "crm.orders"


def case(sql: str, path: tuple[str, ...] = ("public",), index: int = 0, **expect: Any) -> Any:
    return pytest.param(sql, path, index, expect, id=sql[:70])


def check(facts: StatementFacts, expect: dict[str, Any]) -> None:
    for key, wanted in expect.items():
        if key == "reads":
            for relation, columns in wanted.items():
                assert set(columns) <= facts.columns_read.get(relation, frozenset()), (
                    relation,
                    facts.columns_read,
                )
        elif key == "not_reads":
            for relation, columns in wanted.items():
                assert not set(columns) & facts.columns_read.get(relation, frozenset())
        elif key == "has_functions":
            assert set(wanted) <= facts.functions, facts.functions
        elif key == "patterns":
            assert set(facts.pattern_matches) == set(wanted), facts.pattern_matches
        elif key in ("kinds", "relations_read", "relations_written", "functions"):
            assert getattr(facts, key) == frozenset(wanted), (key, getattr(facts, key))
        elif key in ("columns_read", "columns_written"):
            got = {relation: set(columns) for relation, columns in getattr(facts, key).items()}
            assert got == wanted, (key, got)
        elif key == "outputs":
            got_outputs = [(c.name, set(c.sources)) for c in facts.output_columns]
            assert got_outputs == wanted, got_outputs
        else:
            assert getattr(facts, key) == wanted, (key, getattr(facts, key))


# -- statement kinds -----------------------------------------------------------------------

KINDS = [
    case("SELECT 1", kind="select", kinds={"select"}, relations_read=set()),
    case("VALUES (1, 'a'), (2, 'b')", kind="select", relations_read=set()),
    case("TABLE crm.customers", kind="select", columns_read={CUSTOMERS: {ALL}}),
    # The rows it locks hold other sessions' writes: also the LOCK it amounts to.
    case(
        "SELECT id FROM crm.customers FOR UPDATE",
        kind="other",
        kinds={"select", "other"},
        relations_written=set(),
    ),
    case("INSERT INTO crm.customers (email) VALUES ($1)", kind="insert", kinds={"insert"}),
    case("UPDATE crm.customers SET name = 'x' WHERE id = 1", kind="update", kinds={"update"}),
    case("DELETE FROM crm.customers WHERE id = 1", kind="delete", kinds={"delete"}),
    case(
        "MERGE INTO crm.customers c USING crm.staging s ON c.id = s.id "
        "WHEN MATCHED THEN UPDATE SET email = s.email",
        kind="merge",
        kinds={"merge", "update"},
    ),
    case("COPY crm.customers TO STDOUT", kind="copy_to", kinds={"copy_to"}),
    case("COPY (SELECT 1) TO STDOUT", kind="copy_to", kinds={"copy_to", "select"}),
    case("COPY crm.customers FROM STDIN", kind="copy_from", kinds={"copy_from"}),
    case("CREATE TABLE crm.t (id int)", kind="ddl", relations_written={"crm.t"}),
    case("ALTER TABLE crm.t ADD COLUMN x int", kind="ddl", relations_written={"crm.t"}),
    case("DROP TABLE crm.t", kind="ddl", relations_written={"crm.t"}),
    case("TRUNCATE crm.t", kind="ddl", relations_written={"crm.t"}),
    case("COMMENT ON TABLE crm.t IS 'x'", kind="ddl", relations_written={"crm.t"}),
    case("COMMENT ON COLUMN crm.t.c IS 'x'", kind="ddl", relations_written={"crm.t"}),
    case("CREATE TABLE crm.t AS SELECT 1", kind="ddl", kinds={"ddl", "select"}),
    case("SELECT * INTO crm.t FROM crm.customers", kind="ddl", kinds={"ddl", "select"}),
    case("CREATE INDEX ON crm.t (email)", kind="ddl", relations_written={"crm.t"}),
    case("REINDEX TABLE crm.t", kind="ddl"),
    case("CREATE SCHEMA s", kind="ddl"),
    case("CREATE EXTENSION dblink", kind="ddl"),
    case("ALTER SYSTEM SET work_mem = '1GB'", kind="ddl"),
    case("REFRESH MATERIALIZED VIEW crm.mv", kind="ddl", relations_written={"crm.mv"}),
    case("VACUUM crm.t", kind="other", statement_type="VacuumStmt"),
    case("ANALYZE crm.t", kind="other"),
    case("CLUSTER crm.t", kind="other"),
    case("GRANT SELECT ON crm.t TO bob", kind="grant", relations_written={"crm.t"}),
    case("REVOKE ALL ON crm.t FROM bob", kind="grant"),
    case("GRANT admin TO bob", kind="grant"),
    case("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", kind="grant"),
    case("CREATE ROLE r LOGIN PASSWORD 'x'", kind="grant"),
    case("ALTER ROLE r SUPERUSER", kind="grant"),
    case("ALTER USER r SET search_path = crm", kind="grant", new_search_path=None),
    case("DROP ROLE r", kind="grant"),
    case("ALTER ROLE r RENAME TO s", kind="grant"),
    case("ALTER TABLE crm.t RENAME TO u", kind="ddl", relations_written={"crm.t"}),
    case("SET work_mem = '64MB'", kind="set", new_search_path=None, sets_role=False),
    case("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", kind="set"),
    case("SET CONSTRAINTS ALL DEFERRED", kind="set"),
    case("CALL crm.archive_old(30)", kind="call", functions={"crm.archive_old"}, dynamic=False),
    case("DO $$ BEGIN PERFORM 1; END $$", kind="do", dynamic=True),
    case("BEGIN", kind="transaction"),
    case("START TRANSACTION READ ONLY", kind="transaction"),
    case("COMMIT", kind="transaction"),
    case("ROLLBACK", kind="transaction"),
    case("SAVEPOINT s", kind="transaction"),
    case("RELEASE SAVEPOINT s", kind="transaction"),
    case("PREPARE TRANSACTION 'gid'", kind="transaction"),
    case("LISTEN chan", kind="other", statement_type="ListenStmt"),
    case("NOTIFY chan, 'payload'", kind="other"),
    case("SHOW search_path", kind="other", statement_type="VariableShowStmt"),
    case("DISCARD PLANS", kind="other", new_search_path=None, sets_role=False),
    case("FETCH 10 FROM c", kind="other", statement_type="FetchStmt"),
    case("CLOSE c", kind="other"),
    case("CHECKPOINT", kind="other"),
    case("LOAD 'somelib'", kind="other"),
]

# -- kinds performed inside a statement ------------------------------------------------------

NESTED_KINDS = [
    case(
        "WITH d AS (DELETE FROM crm.t RETURNING *) SELECT * FROM d",
        kind="delete",
        kinds={"delete", "select"},
        relations_written={"crm.t"},
    ),
    case(
        "WITH u AS (UPDATE crm.t SET a = 1 WHERE id = 2 RETURNING id) "
        "INSERT INTO crm.log (id) SELECT id FROM u",
        kind="update",
        kinds={"update", "insert", "select"},
        relations_written={"crm.t", "crm.log"},
    ),
    case(
        "INSERT INTO crm.t (id, a) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET a = excluded.a",
        kind="update",
        kinds={"insert", "update"},
        columns_written={"crm.t": {"id", "a"}},
    ),
    case(
        "INSERT INTO crm.t (id) VALUES (1) ON CONFLICT DO NOTHING",
        kind="insert",
        kinds={"insert"},
    ),
    case(
        "MERGE INTO crm.t USING crm.s ON t.id = s.id WHEN MATCHED THEN DELETE "
        "WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
        kind="merge",
        kinds={"merge", "delete", "insert"},
        update_or_delete_without_where=False,
    ),
    case(
        "COPY (DELETE FROM crm.t WHERE id = 1 RETURNING *) TO STDOUT", kinds={"copy_to", "delete"}
    ),
]

# -- relations -------------------------------------------------------------------------------

RELATIONS = [
    case(
        "SELECT c.email, o.total FROM crm.customers c JOIN crm.orders o ON o.customer_id = c.id",
        relations_read={CUSTOMERS, ORDERS},
        columns_read={CUSTOMERS: {"email", "id"}, ORDERS: {"total", "customer_id"}},
    ),
    case(
        "SELECT x.e FROM (SELECT email AS e FROM crm.customers) x",
        relations_read={CUSTOMERS},
        columns_read={CUSTOMERS: {"email"}},
    ),
    case(
        "SELECT id FROM crm.orders WHERE customer_id IN (SELECT id FROM crm.customers WHERE vip)",
        relations_read={CUSTOMERS, ORDERS},
        reads={CUSTOMERS: {"id", "vip"}, ORDERS: {"id", "customer_id"}},
    ),
    case(
        "SELECT (SELECT max(total) FROM crm.orders o WHERE o.customer_id = c.id) "
        "FROM crm.customers c",
        relations_read={CUSTOMERS, ORDERS},
        # bare `total` could be the outer table's column: it is attributed to both
        columns_read={ORDERS: {"total", "customer_id"}, CUSTOMERS: {"id", "total"}},
    ),
    case(
        "SELECT c.id FROM crm.customers c GROUP BY c.id "
        "HAVING count(*) > (SELECT count(*) FROM crm.orders)",
        relations_read={CUSTOMERS, ORDERS},
    ),
    case(
        "WITH recent AS (SELECT * FROM crm.orders) SELECT * FROM recent",
        relations_read={ORDERS},
        columns_read={ORDERS: {ALL}},
    ),
    case(
        "WITH RECURSIVE tree(id, parent) AS (SELECT id, parent FROM crm.nodes WHERE id = 1 "
        "UNION ALL SELECT n.id, n.parent FROM crm.nodes n JOIN tree t ON n.parent = t.id) "
        "SELECT id FROM tree",
        relations_read={"crm.nodes"},
        columns_read={"crm.nodes": {"id", "parent"}},
    ),
    case("WITH customers AS (SELECT 1 AS id) SELECT * FROM customers", relations_read=set()),
    case(
        "WITH customers AS (SELECT email FROM customers) SELECT * FROM customers",
        ("crm",),
        relations_read={CUSTOMERS},
        columns_read={CUSTOMERS: {"email"}},
    ),
    case(
        "WITH customers AS (SELECT 1) SELECT email FROM crm.customers",
        relations_read={CUSTOMERS},
        columns_read={CUSTOMERS: {"email"}},
    ),
    case(
        "SELECT email FROM crm.customers UNION SELECT email FROM crm.leads",
        relations_read={CUSTOMERS, "crm.leads"},
        outputs=[("email", {(CUSTOMERS, "email"), ("crm.leads", "email")})],
    ),
    case(
        "SELECT id FROM crm.a INTERSECT SELECT id FROM crm.b EXCEPT SELECT id FROM crm.c",
        relations_read={"crm.a", "crm.b", "crm.c"},
    ),
    case(
        "SELECT c.id, l.n FROM crm.customers c, LATERAL (SELECT count(*) AS n FROM crm.orders o "
        "WHERE o.customer_id = c.id) l",
        relations_read={CUSTOMERS, ORDERS},
        columns_read={CUSTOMERS: {"id"}, ORDERS: {"customer_id"}},
    ),
    case(
        "SELECT c.id, x.email FROM crm.customers c JOIN LATERAL (SELECT c.email) x ON true",
        columns_read={CUSTOMERS: {"id", "email"}},
        outputs=[("id", {(CUSTOMERS, "id")}), ("email", {(CUSTOMERS, "email")})],
    ),
    case("SELECT name FROM crm.customer_view", relations_read={"crm.customer_view"}),
    case(
        "INSERT INTO crm.archive (id, email) SELECT id, email FROM crm.customers",
        relations_read={CUSTOMERS},
        relations_written={"crm.archive"},
        columns_written={"crm.archive": {"id", "email"}},
    ),
    case(
        "UPDATE crm.customers c SET email = s.email FROM crm.staging s WHERE s.id = c.id",
        relations_read={CUSTOMERS, "crm.staging"},
        relations_written={CUSTOMERS},
        columns_read={CUSTOMERS: {"id"}, "crm.staging": {"email", "id"}},
        columns_written={CUSTOMERS: {"email"}},
    ),
    case(
        "DELETE FROM crm.customers c USING crm.blocked b WHERE b.email = c.email",
        relations_read={CUSTOMERS, "crm.blocked"},
        relations_written={CUSTOMERS},
    ),
    case(
        "MERGE INTO crm.customers c USING (SELECT id, email FROM crm.staging) s ON c.id = s.id "
        "WHEN NOT MATCHED THEN INSERT (id, email) VALUES (s.id, s.email)",
        relations_read={CUSTOMERS, "crm.staging"},
        columns_written={CUSTOMERS: {"id", "email"}},
    ),
    case(
        "DELETE FROM crm.customers WHERE id = 1 RETURNING email",
        relations_written={CUSTOMERS},
        columns_read={CUSTOMERS: {"id", "email"}},
        outputs=[("email", {(CUSTOMERS, "email")})],
    ),
    case(
        "INSERT INTO crm.t AS x (id, a) VALUES (1, 2) ON CONFLICT (id) WHERE x.a > 0 "
        "DO UPDATE SET a = excluded.a + x.a",
        columns_read={"crm.t": {"id", "a"}},
    ),
    case("TRUNCATE crm.a, crm.b", relations_written={"crm.a", "crm.b"}),
    case("COPY crm.t FROM STDIN", relations_written={"crm.t"}, relations_read=set()),
    case("DROP TABLE crm.a, b", relations_written={"crm.a", "public.b"}),
    case("DROP VIEW IF EXISTS crm.v", relations_written={"crm.v"}),
    case("LOCK TABLE crm.t", relations_written={"crm.t"}),
    case(
        "LOCK TABLE crm.t IN ACCESS SHARE MODE", relations_read={"crm.t"}, relations_written=set()
    ),
    case(
        "CREATE TABLE crm.t (id int REFERENCES crm.parent(id))",
        relations_written={"crm.t"},
        relations_read={"crm.parent"},
    ),
    case(
        "CREATE VIEW crm.v AS SELECT email FROM crm.customers",
        kind="ddl",
        relations_written={"crm.v"},
        relations_read={CUSTOMERS},
    ),
    case(
        "SELECT customers.email FROM crm.orders customers",
        relations_read={ORDERS},
        columns_read={ORDERS: {"email"}},
    ),
    case("SELECT crm.customers.email FROM crm.customers", columns_read={CUSTOMERS: {"email"}}),
    case(
        "SELECT * FROM crm.customers TABLESAMPLE SYSTEM (1)",
        relations_read={CUSTOMERS},
        columns_read={CUSTOMERS: {ALL}},
    ),
    case(
        "SELECT g FROM generate_series(1, 3) g",
        relations_read=set(),
        has_functions={"generate_series"},
    ),
]

# -- name resolution ---------------------------------------------------------------------

RESOLUTION = [
    case("SELECT * FROM customers", ("crm", "public"), relations_read={CUSTOMERS}),
    case("SELECT * FROM customers", relations_read={"public.customers"}),
    case("SELECT * FROM customers", ("$user", "crm"), relations_read={CUSTOMERS}),
    case("SELECT * FROM customers", ("pg_catalog", "crm"), relations_read={CUSTOMERS}),
    case("SELECT * FROM customers", (), relations_read={"public.customers"}),
    case("SELECT relname FROM pg_class", ("crm",), relations_read={"pg_catalog.pg_class"}),
    case(
        "SELECT * FROM pg_stat_activity", ("crm",), relations_read={"pg_catalog.pg_stat_activity"}
    ),
    case(
        "SELECT * FROM pg_roles, pg_user, pg_shadow, pg_authid",
        ("crm",),
        relations_read={
            "pg_catalog.pg_roles",
            "pg_catalog.pg_user",
            "pg_catalog.pg_shadow",
            "pg_catalog.pg_authid",
        },
    ),
    case("SELECT * FROM pg_whatever_mine", ("crm",), relations_read={"crm.pg_whatever_mine"}),
    case(
        "SELECT * FROM information_schema.tables",
        relations_read={"information_schema.tables"},
    ),
    case("SELECT * FROM tables", ("crm",), relations_read={"crm.tables"}),
    case("SELECT * FROM pg_temp.scratch", ("crm",), relations_read={"pg_temp.scratch"}),
    case("CREATE TEMP TABLE scratch (id int)", ("crm",), relations_written={"pg_temp.scratch"}),
    case("SELECT * INTO TEMP scratch FROM crm.t", relations_written={"pg_temp.scratch"}),
    case('SELECT * FROM "crm"."customers"', relations_read={CUSTOMERS}),
    case('SELECT * FROM "Customers"', ("crm",), relations_read={"crm.Customers"}),
    case("SELECT * FROM CRM.CUSTOMERS", relations_read={CUSTOMERS}),
    case('SELECT * FROM crm."a.b"', relations_read={'crm."a.b"'}),
    case("SELECT * FROM mydb.crm.customers", relations_read={CUSTOMERS}),
]

# -- columns ---------------------------------------------------------------------------------

COLUMNS = [
    case("SELECT c.email FROM crm.customers c", columns_read={CUSTOMERS: {"email"}}),
    case("SELECT email FROM crm.customers", columns_read={CUSTOMERS: {"email"}}),
    case(
        "SELECT email FROM crm.customers c JOIN crm.orders o ON o.customer_id = c.id",
        columns_read={CUSTOMERS: {"email", "id"}, ORDERS: {"email", "customer_id"}},
    ),
    case("SELECT * FROM crm.customers", columns_read={CUSTOMERS: {ALL}}),
    case(
        "SELECT c.*, o.id FROM crm.customers c JOIN crm.orders o ON true",
        columns_read={CUSTOMERS: {ALL}, ORDERS: {"id"}},
    ),
    case("SELECT c FROM crm.customers c", reads={CUSTOMERS: {ALL}}),
    case("SELECT row_to_json(c) FROM crm.customers c", reads={CUSTOMERS: {ALL}}),
    case("SELECT count(c.*) FROM crm.customers c", reads={CUSTOMERS: {ALL}}),
    case(
        "SELECT count(*) FROM crm.customers",
        relations_read={CUSTOMERS},
        columns_read={},
    ),
    case(
        "SELECT id FROM crm.customers WHERE email = $1 GROUP BY id, country ORDER BY created_at",
        columns_read={CUSTOMERS: {"id", "email", "country", "created_at"}},
    ),
    case(
        "SELECT lower(email) AS e, count(*) FROM crm.customers GROUP BY e ORDER BY e",
        columns_read={CUSTOMERS: {"email"}},
    ),
    case(
        "SELECT id FROM crm.customers ORDER BY 1 LIMIT 1",
        columns_read={CUSTOMERS: {"id"}},
    ),
    case(
        "WITH x AS (SELECT email AS e FROM crm.customers) SELECT e FROM x",
        columns_read={CUSTOMERS: {"email"}},
        outputs=[("e", {(CUSTOMERS, "email")})],
    ),
    case(
        "WITH x(mail) AS (SELECT email FROM crm.customers) SELECT upper(mail) FROM x",
        outputs=[("upper", {(CUSTOMERS, "email")})],
    ),
    case(
        "SELECT s.email FROM (SELECT * FROM crm.customers) s",
        columns_read={CUSTOMERS: {ALL, "email"}},
        outputs=[("email", {(CUSTOMERS, "email")})],
    ),
    case(
        "SELECT s.a FROM crm.customers AS s(a, b)",
        columns_read={CUSTOMERS: {ALL}},
    ),
    case(
        "SELECT 1 FROM crm.customers c "
        "WHERE EXISTS (SELECT * FROM crm.orders o WHERE o.cid = c.id)",
        columns_read={CUSTOMERS: {"id"}, ORDERS: {"cid"}},
    ),
    case(
        "SELECT id FROM crm.orders WHERE EXISTS (SELECT 1 FROM crm.customers WHERE vip)",
        reads={CUSTOMERS: {"vip"}, ORDERS: {"vip", "id"}},
    ),
    case(
        "SELECT (SELECT email FROM crm.flags LIMIT 1) FROM crm.customers",
        reads={CUSTOMERS: {"email"}, "crm.flags": {"email"}},
    ),
    case(
        "SELECT * FROM crm.a JOIN crm.b USING (id)",
        reads={"crm.a": {"id", ALL}, "crm.b": {"id", ALL}},
    ),
    case("SELECT 1 FROM crm.a NATURAL JOIN crm.b", columns_read={"crm.a": {ALL}, "crm.b": {ALL}}),
    case(
        "SELECT j.id FROM (crm.a JOIN crm.b ON a.x = b.y) AS j",
        columns_read={"crm.a": {"x", "id"}, "crm.b": {"y", "id"}},
    ),
    case(
        "SELECT e.key FROM crm.customers c, jsonb_each(c.profile) e",
        columns_read={CUSTOMERS: {"profile"}},
        outputs=[("key", {(CUSTOMERS, "profile")})],
    ),
    case(
        "SELECT v.x FROM (VALUES (1), (2)) AS v(x)",
        relations_read=set(),
        outputs=[("x", set())],
    ),
    case("INSERT INTO crm.t (a, b) VALUES (1, 2)", columns_written={"crm.t": {"a", "b"}}),
    case("INSERT INTO crm.t VALUES (1, 2)", columns_written={"crm.t": {ALL}}),
    case("INSERT INTO crm.t DEFAULT VALUES", columns_written={"crm.t": {ALL}}),
    case(
        "UPDATE crm.t SET a = a + 1, (b, c) = (SELECT 1, 2) WHERE id = 3",
        columns_written={"crm.t": {"a", "b", "c"}},
        columns_read={"crm.t": {"a", "id"}},
    ),
    case("COPY crm.t (a, b) FROM STDIN", columns_written={"crm.t": {"a", "b"}}),
    case("COPY crm.t (a, b) TO STDOUT", columns_read={"crm.t": {"a", "b"}}),
    case(
        "UPDATE crm.t SET a = 1 WHERE id = 1 RETURNING old.a, new.a",
        columns_read={"crm.t": {"a", "id"}},
    ),
]

# -- functions -------------------------------------------------------------------------------

FUNCTIONS = [
    case(
        "SELECT pg_catalog.pg_read_file('x'), lower(name) FROM crm.t",
        functions={"pg_catalog.pg_read_file", "lower"},
    ),
    case(
        "CREATE TABLE crm.t (id bigint DEFAULT nextval('crm.seq'), at timestamptz DEFAULT now())",
        functions={"nextval", "now"},
    ),
    case("ALTER TABLE crm.t ALTER COLUMN a SET DEFAULT crm.gen()", functions={"crm.gen"}),
    case("CALL crm.proc(pg_sleep(1))", functions={"crm.proc", "pg_sleep"}),
    case("INSERT INTO crm.t (id) VALUES (nextval('s'))", functions={"nextval"}),
    case(
        "SELECT count(*) FILTER (WHERE f(a)), rank() OVER (ORDER BY g(b)) FROM crm.t",
        functions={"count", "f", "rank", "g"},
    ),
    case('SELECT "Weird"."Fn"()', functions={"Weird.Fn"}),
    case(
        "CREATE TRIGGER tr AFTER INSERT ON crm.t FOR EACH ROW EXECUTE FUNCTION crm.audit()",
        kind="ddl",
        functions={"crm.audit"},
        relations_written={"crm.t"},
    ),
    case(
        "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION g()",
        kind="ddl",
        functions={"g"},
    ),
]

# -- UPDATE / DELETE without WHERE -----------------------------------------------------------

WITHOUT_WHERE = [
    case("UPDATE crm.t SET a = 1", update_or_delete_without_where=True),
    case("DELETE FROM crm.t", update_or_delete_without_where=True),
    case("DELETE FROM crm.t WHERE true", update_or_delete_without_where=True),
    case("DELETE FROM crm.t WHERE 1 = 1", update_or_delete_without_where=True),
    case("DELETE FROM crm.t WHERE 'a' = 'a'", update_or_delete_without_where=True),
    case("DELETE FROM crm.t WHERE '1' = 1", update_or_delete_without_where=True),
    case("DELETE FROM crm.t WHERE id = 1", update_or_delete_without_where=False),
    case("DELETE FROM crm.t WHERE id = 1 OR 1 = 1", update_or_delete_without_where=True),
    case("DELETE FROM crm.t WHERE id = 1 OR $1", update_or_delete_without_where=True),
    case("DELETE FROM crm.t WHERE id = 1 AND true", update_or_delete_without_where=False),
    case("DELETE FROM crm.t WHERE NOT (id = 5 AND false)", update_or_delete_without_where=True),
    case("DELETE FROM crm.t WHERE false", update_or_delete_without_where=False),
    case("DELETE FROM crm.t WHERE $1", update_or_delete_without_where=True),
    case("UPDATE crm.t SET a = 1 WHERE now() > '2000-01-01'", update_or_delete_without_where=True),
    case(
        "DELETE FROM crm.t WHERE EXISTS (SELECT 1 FROM crm.u)",
        update_or_delete_without_where=True,
    ),
    case(
        "DELETE FROM crm.t WHERE EXISTS (SELECT 1 FROM crm.u WHERE u.id = t.id)",
        update_or_delete_without_where=False,
    ),
    case(
        "DELETE FROM crm.t WHERE id IN (SELECT tid FROM crm.u)",
        update_or_delete_without_where=False,
    ),
    case(
        "DELETE FROM crm.t USING crm.u WHERE u.flag",
        update_or_delete_without_where=True,
    ),
    case("DELETE FROM crm.t WHERE CURRENT OF c", update_or_delete_without_where=False),
    case(
        "WITH d AS (DELETE FROM crm.t RETURNING id) SELECT count(*) FROM d",
        update_or_delete_without_where=True,
    ),
    case(
        "WITH u AS (UPDATE crm.t SET a = 1 WHERE id = 2 RETURNING id) SELECT * FROM u",
        update_or_delete_without_where=False,
    ),
    case("SELECT * FROM crm.t", update_or_delete_without_where=False),
    case(
        "MERGE INTO crm.t USING crm.s ON true WHEN MATCHED THEN DELETE",
        update_or_delete_without_where=True,
    ),
    case(
        "MERGE INTO crm.t USING crm.s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
        update_or_delete_without_where=True,
    ),
]

# -- pattern matches -------------------------------------------------------------------------


def pm(column: str, operator: str, pattern: Any, negated: bool = False) -> PatternMatch:
    return PatternMatch(CUSTOMERS, column, operator, pattern, negated)


PATTERNS = [
    case(
        "SELECT id FROM crm.customers WHERE email LIKE '%@x.com'",
        patterns=[pm("email", "~~", "%@x.com")],
    ),
    case(
        "SELECT id FROM crm.customers WHERE email ILIKE 'A%'", patterns=[pm("email", "~~*", "A%")]
    ),
    case(
        "SELECT id FROM crm.customers WHERE email NOT LIKE 'a%'",
        patterns=[pm("email", "~~", "a%", negated=True)],
    ),
    case(
        "SELECT id FROM crm.customers WHERE email NOT ILIKE 'a%'",
        patterns=[pm("email", "~~*", "a%", negated=True)],
    ),
    case("SELECT id FROM crm.customers WHERE email ~~ 'a%'", patterns=[pm("email", "~~", "a%")]),
    case("SELECT id FROM crm.customers WHERE email ~~* 'a%'", patterns=[pm("email", "~~*", "a%")]),
    case("SELECT id FROM crm.customers WHERE email ~ '^a'", patterns=[pm("email", "~", "^a")]),
    case("SELECT id FROM crm.customers WHERE email ~* '^a'", patterns=[pm("email", "~*", "^a")]),
    case(
        "SELECT id FROM crm.customers WHERE email !~ '^a'",
        patterns=[pm("email", "~", "^a", negated=True)],
    ),
    case(
        "SELECT id FROM crm.customers WHERE email SIMILAR TO '%(a|b)%'",
        patterns=[pm("email", "similar", "%(a|b)%")],
    ),
    case(
        "SELECT id FROM crm.customers WHERE email NOT SIMILAR TO 'a%'",
        patterns=[pm("email", "similar", "a%", negated=True)],
    ),
    case(
        "SELECT id FROM crm.customers WHERE lower(email) LIKE 'a%'",
        patterns=[pm("email", "~~", "a%")],
    ),
    case(
        "SELECT id FROM crm.customers c WHERE c.email::text LIKE $2",
        patterns=[pm("email", "~~", ParameterRef(2))],
    ),
    case(
        "SELECT id FROM crm.customers WHERE email LIKE name || '%'",
        patterns=[pm("email", "~~", None), pm("name", "~~", None)],
    ),
    case(
        "SELECT id FROM crm.customers WHERE email LIKE 'a!%%' ESCAPE '!'",
        patterns=[pm("email", "~~", "a!%%")],
    ),
    case(
        "SELECT id FROM crm.customers WHERE email LIKE ANY (ARRAY['a%', 'b%'])",
        patterns=[pm("email", "~~", None)],
    ),
    case(
        "SELECT id FROM crm.customers WHERE email OPERATOR(pg_catalog.~~) 'a%'",
        patterns=[pm("email", "~~", "a%")],
    ),
    case(
        "SELECT * FROM (SELECT email AS e FROM crm.customers) s WHERE e LIKE '%x%'",
        patterns=[pm("email", "~~", "%x%")],
    ),
    case(
        "SELECT id FROM crm.customers WHERE email LIKE ANY (SELECT p FROM crm.patterns)",
        patterns=[pm("email", "~~", None)],
    ),
    case(
        "SELECT id FROM crm.customers WHERE email !~~* ALL (SELECT p FROM crm.patterns)",
        patterns=[pm("email", "~~*", None, negated=True)],
    ),
    case("SELECT 'abc' LIKE 'a%'", patterns=[]),
    case("SELECT id FROM crm.customers WHERE email = 'a@b.c'", patterns=[]),
    # Keys that rank, group or pick rows, and filters of aggregates and writes, computed
    # from a column: searches of it. The same keys on columns as they are: none.
    case(
        "SELECT count(*) FILTER (WHERE split_part(email, '@', 2) = 'x.com') FROM crm.customers",
        patterns=[pm("email", "~", None)],
    ),
    case(
        "SELECT id, rank() OVER (ORDER BY length(email) - length(replace(email, 'x', '')))"
        " FROM crm.customers",
        patterns=[pm("email", "~", None)],
    ),
    case(
        "SELECT id FROM crm.customers WINDOW w AS (PARTITION BY split_part(email, '@', 2))",
        patterns=[pm("email", "~", None)],
    ),
    case(
        "SELECT count(*) FROM crm.customers GROUP BY CUBE (split_part(email, '@', 2))",
        patterns=[pm("email", "~", None)],
    ),
    case(
        "SELECT DISTINCT ON (email::tsvector @@ 'x'::tsquery) id FROM crm.customers",
        patterns=[pm("email", "~", None)],
    ),
    case(
        "DELETE FROM crm.orders o USING crm.customers c WHERE o.customer_id = c.id"
        " AND c.email || '' = 'a@b.c'",
        patterns=[pm("email", "~", None)],
    ),
    case(
        "INSERT INTO crm.customers (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 2"
        " WHERE right(crm.customers.email, 4) = '.com'",
        patterns=[pm("email", "~", None)],
    ),
    case(
        "SELECT count(*) FILTER (WHERE email = 'a@b.c'), rank() OVER (PARTITION BY email"
        " ORDER BY id) FROM crm.customers GROUP BY ROLLUP (email, id)",
        patterns=[],
    ),
]

# -- LIMIT -----------------------------------------------------------------------------------

LIMITS = [
    case("SELECT * FROM crm.t LIMIT 10", limit=10),
    case("SELECT * FROM crm.t LIMIT 0", limit=0),
    case("SELECT * FROM crm.t LIMIT $1", limit=ParameterRef(1)),
    case("SELECT * FROM crm.t LIMIT ALL", limit=None),
    case("SELECT * FROM crm.t LIMIT NULL", limit=None),
    case("SELECT * FROM crm.t", limit=None),
    case("SELECT * FROM crm.t OFFSET 5", limit=None),
    case("SELECT * FROM crm.t FETCH FIRST 5 ROWS ONLY", limit=5),
    case("SELECT * FROM crm.t ORDER BY a FETCH FIRST 5 ROWS WITH TIES", limit=None),
    case("SELECT * FROM crm.t LIMIT 99999999999", limit=99999999999),
    case("SELECT * FROM crm.t LIMIT 5 + 5", limit=None),
    case("SELECT * FROM (SELECT * FROM crm.t LIMIT 5) s", limit=None),
    case("SELECT a FROM crm.t UNION SELECT a FROM crm.u LIMIT 3", limit=3),
    case("WITH x AS (SELECT 1) SELECT * FROM x LIMIT 7", limit=7),
    case("COPY (SELECT * FROM crm.t LIMIT 2) TO STDOUT", limit=2),
    case("EXPLAIN ANALYZE SELECT * FROM crm.t LIMIT 4", limit=4),
    case("DELETE FROM crm.t WHERE id IN (SELECT id FROM crm.t LIMIT 1)", limit=None),
]

# -- COPY destinations -----------------------------------------------------------------------

COPY = [
    case("COPY crm.t TO STDOUT", copy_destination="stdout"),
    case("COPY crm.t FROM STDIN", copy_destination="stdin"),
    case("COPY crm.t TO '/tmp/out.csv'", copy_destination="file"),
    case("COPY crm.t FROM '/tmp/in.csv'", copy_destination="file"),
    case("COPY crm.t TO PROGRAM 'gzip > /tmp/x.gz'", copy_destination="program"),
    case("COPY crm.t FROM PROGRAM 'cat /etc/passwd'", copy_destination="program"),
    case(
        "COPY (SELECT email FROM crm.customers) TO STDOUT",
        copy_destination="stdout",
        columns_read={CUSTOMERS: {"email"}},
        outputs=[("email", {(CUSTOMERS, "email")})],
    ),
    case("SELECT 1", copy_destination=None),
]

# -- dynamic code ----------------------------------------------------------------------------

DYNAMIC = [
    case("DO $$ BEGIN EXECUTE 'DROP TABLE x'; END $$", dynamic=True, kind="do"),
    case("CALL crm.proc()", dynamic=False),
    case("SELECT query_to_xml('SELECT * FROM crm.customers', true, false, '')", dynamic=True),
    case("SELECT table_to_xml('crm.customers'::regclass, true, false, '')", dynamic=True),
    case("SELECT * FROM dblink('dbname=x', 'SELECT 1') AS t(a int)", dynamic=True),
    case("SELECT ext.dblink_exec('DELETE FROM t')", dynamic=True),
    case("SELECT set_config(name, 'x', false) FROM crm.settings", dynamic=True),
    case("SELECT 1", dynamic=False),
]

# -- search_path changes ---------------------------------------------------------------------

SEARCH_PATH = [
    case("SET search_path TO crm, public", new_search_path=("crm", "public")),
    case("SET search_path = crm", new_search_path=("crm",), search_path_local=False),
    case('SET search_path TO "CRM", "$user"', new_search_path=("CRM", "$user")),
    case("SET SESSION search_path TO crm", new_search_path=("crm",)),
    case("SET LOCAL search_path TO crm", new_search_path=("crm",), search_path_local=True),
    case("RESET search_path", new_search_path=()),
    case("SET search_path TO DEFAULT", new_search_path=()),
    case("RESET ALL", new_search_path=(), sets_role=True),
    case("DISCARD ALL", new_search_path=(), sets_role=True, deallocates="*"),
    case(
        "SELECT set_config('search_path', 'crm, \"Sales\"', false)",
        new_search_path=("crm", "Sales"),
        kind="set",
        kinds={"set", "select"},
        dynamic=False,
    ),
    case(
        "SELECT pg_catalog.set_config('search_path', '', false)",
        new_search_path=(),
        dynamic=False,
    ),
    case(
        "SELECT set_config('search_path', 'crm', true)",
        new_search_path=("crm",),
        search_path_local=True,
    ),
    case(
        "SELECT set_config('search_path', 'crm', false) WHERE false",
        new_search_path=None,
        dynamic=True,
    ),
    case("SELECT set_config('search_path', $1, false)", new_search_path=None, dynamic=True),
    case("SELECT set_config('search_path', 'a,', false)", new_search_path=None, dynamic=True),
    case("SELECT set_config($1, 'crm', false)", dynamic=True),
    case("SELECT set_config('work_mem', '1GB', false)", kind="set", dynamic=False),
    case("SELECT set_config('role', 'admin', false)", sets_role=True, kind="set"),
    case(
        "PREPARE p AS SELECT set_config('search_path', 'crm', false)",
        new_search_path=None,
        dynamic=True,
    ),
    case(
        "UPDATE pg_settings SET setting = 'crm' WHERE name = 'search_path'",
        dynamic=True,
        relations_written={"pg_catalog.pg_settings"},
    ),
    case("SET ROLE admin", sets_role=True, kind="set"),
    case("SET LOCAL ROLE admin", sets_role=True),
    case("SET SESSION AUTHORIZATION bob", sets_role=True),
    case("RESET ROLE", sets_role=True),
    case("RESET SESSION AUTHORIZATION", sets_role=True),
    case("SET search_path TO crm; SELECT * FROM t", index=1, relations_read={"crm.t"}),
    case(
        "SET search_path TO crm; RESET search_path; SELECT * FROM t",
        index=2,
        relations_read={"public.t"},
    ),
    case("SET search_path TO '$user', crm; SELECT * FROM t", index=1, relations_read={"crm.t"}),
    case(
        "SELECT set_config('search_path', 'sales', false); SELECT * FROM t",
        index=1,
        relations_read={"sales.t"},
    ),
    case("SET search_path TO crm; ROLLBACK; SELECT * FROM t", index=2, relations_read={"public.t"}),
    case(
        "BEGIN; SET LOCAL search_path TO crm; SELECT * FROM t; COMMIT; SELECT * FROM t",
        index=2,
        relations_read={"crm.t"},
    ),
    case(
        "BEGIN; SET LOCAL search_path TO crm; COMMIT; SELECT * FROM t",
        index=3,
        relations_read={"public.t"},
    ),
    case(
        "BEGIN; SET search_path TO crm; COMMIT; ROLLBACK; SELECT * FROM t",
        index=4,
        relations_read={"crm.t"},
    ),
    case(
        "BEGIN; SET search_path TO a; SAVEPOINT s; SET search_path TO b; "
        "ROLLBACK TO SAVEPOINT s; SELECT * FROM t",
        index=5,
        relations_read={"a.t"},
    ),
    case(
        "SET search_path TO a; ROLLBACK TO SAVEPOINT earlier; SELECT * FROM t",
        ("crm",),
        index=2,
        relations_read={"crm.t"},
    ),
    case(
        "EXPLAIN SELECT * FROM t; SET search_path TO x; SELECT * FROM t",
        ("crm",),
        index=0,
        relations_read={"crm.t"},
    ),
]

# -- prepared statements, EXPLAIN ------------------------------------------------------------

PREPARED = [
    case(
        "PREPARE p(int) AS DELETE FROM crm.t WHERE id = $1",
        prepares="p",
        kind="delete",
        relations_written={"crm.t"},
        update_or_delete_without_where=False,
    ),
    case(
        "PREPARE q AS SELECT email FROM crm.customers LIMIT $1", prepares="q", limit=ParameterRef(1)
    ),
    case("EXECUTE p(1)", executes="p", kind="other", statement_type="ExecuteStmt"),
    case("EXECUTE p(pg_read_file('x'))", executes="p", functions={"pg_read_file"}),
    case("DEALLOCATE p", deallocates="p", kind="other"),
    case("DEALLOCATE PREPARE p", deallocates="p"),
    case("DEALLOCATE ALL", deallocates="*"),
    # Not decided as what EXECUTE runs: its rows are stored, not returned to be masked.
    case(
        "CREATE TABLE crm.x AS EXECUTE p",
        executes=None,
        kind="ddl",
        copies=(ValueCopy("crm.x", "*", frozenset(), unseen=True),),
    ),
    case(
        "DECLARE c CURSOR FOR SELECT email FROM crm.customers",
        kind="select",
        columns_read={CUSTOMERS: {"email"}},
        statement_type="DeclareCursorStmt",
    ),
    case("EXPLAIN SELECT * FROM crm.t", explain_only=True, kind="select", relations_read={"crm.t"}),
    case("EXPLAIN VERBOSE SELECT 1", explain_only=True),
    case("EXPLAIN ANALYZE SELECT * FROM crm.t", explain_only=False, kind="select"),
    case("EXPLAIN (ANALYZE) UPDATE crm.t SET a = 1", explain_only=False, kind="update"),
    case("EXPLAIN (ANALYZE false) DELETE FROM crm.t", explain_only=True, kind="delete"),
    case("EXPLAIN (ANALYZE off, COSTS off) DELETE FROM crm.t", explain_only=True),
    case("EXPLAIN (ANALYZE on) DELETE FROM crm.t", explain_only=False),
    case("EXPLAIN (ANALYZE 1) DELETE FROM crm.t", explain_only=False),
    case("EXPLAIN (FORMAT JSON) DELETE FROM crm.t", explain_only=True, kind="delete"),
    case("EXPLAIN SELECT * FROM crm.t", output_columns=()),
]

# -- output columns --------------------------------------------------------------------------

OUTPUTS = [
    case(
        "SELECT c.email AS mail, lower(c.name), 1, c.id::text FROM crm.customers c",
        outputs=[
            ("mail", {(CUSTOMERS, "email")}),
            ("lower", {(CUSTOMERS, "name")}),
            ("?column?", set()),
            ("id", {(CUSTOMERS, "id")}),
        ],
    ),
    case(
        "SELECT * FROM crm.customers c, crm.orders o",
        outputs=[(None, {(CUSTOMERS, ALL)}), (None, {(ORDERS, ALL)})],
    ),
    case(
        "INSERT INTO crm.t (a) VALUES (1) RETURNING id, a",
        outputs=[("id", {("crm.t", "id")}), ("a", {("crm.t", "a")})],
    ),
    case("SELECT * INTO crm.copy FROM crm.t", output_columns=()),
    case("UPDATE crm.t SET a = 1 WHERE id = 2", output_columns=()),
    case("COPY crm.t TO STDOUT", outputs=[(None, {("crm.t", ALL)})]),
    case(
        "SELECT (SELECT email FROM crm.customers LIMIT 1) AS e",
        outputs=[("e", {(CUSTOMERS, "email")})],
    ),
]

ALL_CASES = (
    KINDS
    + NESTED_KINDS
    + RELATIONS
    + RESOLUTION
    + COLUMNS
    + FUNCTIONS
    + WITHOUT_WHERE
    + PATTERNS
    + LIMITS
    + COPY
    + DYNAMIC
    + SEARCH_PATH
    + PREPARED
    + OUTPUTS
)


@pytest.mark.parametrize(("sql", "path", "index", "expect"), ALL_CASES)
def test_facts(sql: str, path: tuple[str, ...], index: int, expect: dict[str, Any]) -> None:
    analysis = analyze(sql, path)
    assert analysis.error is None, analysis.error
    check(analysis.statements[index], expect)


def test_there_are_enough_cases() -> None:
    assert len(ALL_CASES) >= 120


# -- the query string as a whole -------------------------------------------------------------


def test_statements_keep_their_own_text() -> None:
    analysis = analyze("SELECT 1; DELETE FROM crm.t -- bye\n;  UPDATE crm.t SET a = 'é' ; ")
    assert list(analysis.texts) == [
        "SELECT 1",
        "DELETE FROM crm.t -- bye",
        "UPDATE crm.t SET a = 'é'",
    ]
    assert analysis.multiple_statements
    assert [s.kind for s in analysis.statements] == ["select", "delete", "update"]


def test_text_offsets_are_bytes_not_characters() -> None:
    analysis = analyze("SELECT 'żółw' AS ü; SELECT email FROM crm.customers")
    assert analysis.texts[1] == "SELECT email FROM crm.customers"
    assert analysis.statements[1].relations_read == {CUSTOMERS}


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment", "/* block */", ";;", " ; -- x"])
def test_empty_text_has_no_statements_and_no_error(sql: str) -> None:
    assert analyze(sql) == Analysis(statements=(), error=None)


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELEC 1", 'syntax error at or near "SELEC"'),
        ("SELECT FROM WHERE", "syntax error"),
        ("SELECT 1; SELEC 2", 'syntax error at or near "SELEC"'),
        ("SELECT 'unterminated", "unterminated quoted string"),
    ],
)
def test_a_text_that_does_not_parse_gives_an_error_and_no_statements(
    sql: str, fragment: str
) -> None:
    analysis = analyze(sql)
    assert analysis.statements == ()
    assert analysis.error is not None
    assert fragment in analysis.error
    assert "at index" in analysis.error  # the position, to find the mistake


def test_a_nul_character_is_refused() -> None:
    analysis = analyze("SELECT 1\x00; DROP TABLE crm.customers")
    assert analysis.statements == ()
    assert analysis.error is not None
    assert "NUL" in analysis.error


def test_a_lone_surrogate_is_refused() -> None:
    analysis = analyze("SELECT '\ud800'")
    assert analysis.statements == ()
    assert analysis.error is not None


def test_nesting_too_deep_is_refused_not_raised() -> None:
    depth = 400
    analysis = analyze("SELECT " + "(SELECT " * depth + "1" + ")" * depth)
    assert analysis.statements == ()
    assert analysis.error is not None
    assert "nested too deeply" in analysis.error


def test_a_search_path_given_as_one_string_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="sequence of schema names"):
        analyze("SELECT 1", "crm")
    with pytest.raises(TypeError, match="sequence of schema names"):
        AnalysisCache().analyze("SELECT 1", "crm")


def test_default_search_path_is_public() -> None:
    assert analyze("SELECT * FROM t").statements[0].relations_read == {"public.t"}


def test_output_column_type() -> None:
    facts = analyze("SELECT id FROM crm.t").statements[0]
    assert facts.output_columns == (OutputColumn("id", frozenset({("crm.t", "id")})),)


# -- cache -----------------------------------------------------------------------------------


def test_cache_returns_the_same_analysis_and_counts() -> None:
    cache = AnalysisCache()
    first = cache.analyze("SELECT * FROM t", ["crm"])
    second = cache.analyze("SELECT * FROM t", ("crm",))
    assert first is second
    assert (cache.hits, cache.misses) == (1, 1)
    other_path = cache.analyze("SELECT * FROM t", ("sales",))
    assert other_path.statements[0].relations_read == {"sales.t"}
    assert (cache.hits, cache.misses) == (1, 2)


def test_cache_evicts_the_least_recently_used() -> None:
    # Texts without literals: those with literals may also be answered by their shape.
    cache = AnalysisCache(max_entries=2)
    cache.analyze("SELECT a", ())
    cache.analyze("SELECT b", ())
    cache.analyze("SELECT a", ())  # now most recent
    cache.analyze("SELECT c", ())  # evicts SELECT b
    assert len(cache) == 2
    cache.analyze("SELECT a", ())
    assert cache.hits == 2
    cache.analyze("SELECT b", ())
    assert cache.misses == 4


def test_cache_bounds_the_bytes_it_holds() -> None:
    small = [f"SELECT {name}" for name in "abcde"]  # no literal to share a shape
    weight = estimated_bytes(small[0], analyze(small[0], ()))
    cache = AnalysisCache(max_entries=100, max_total_bytes=64 * 3 * weight)
    # One analysis heavier than a sixty-fourth of the budget is not kept at all.
    heavy = "SELECT " + ", ".join(["1"] * 2000)
    assert cache.analyze(heavy, ()).statements[0].kind == "select"
    assert len(cache) == 0
    for sql in small:
        cache.analyze(sql, ())
    assert cache.total_bytes <= cache.max_total_bytes
    assert len(cache) == 5
    # Past the budget the least recently used go: the newest is always held.
    tight = AnalysisCache(max_entries=1000, max_total_bytes=64 * (weight + 64))
    names = [f"SELECT c{number}" for number in range(200)]
    for sql in names:
        tight.analyze(sql, ())
    assert tight.total_bytes <= tight.max_total_bytes
    assert 32 <= len(tight) <= 70
    assert tight.analyze(names[-1], ()) is tight.analyze(names[-1], ())
    assert tight.hits == 2


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
        "SELECT " + ", ".join(["1"] * 3000),
        "SELECT " + ", ".join(f"c{i}" for i in range(1500)) + " FROM t",
        "SELECT " + ", ".join(["x"] * 100) + " FROM " + ", ".join(f"t{i}" for i in range(100)),
        "INSERT INTO t (a, b, c) VALUES " + ", ".join(["(1, 'x', 2)"] * 800),
    ],
    ids=["point", "literals", "columns", "cross", "values"],
)
def test_the_cache_estimate_is_not_below_half_the_memory_an_analysis_holds(sql: str) -> None:
    tracemalloc.start()
    try:
        # A generous budget: tracemalloc slows the analysis down many times.
        analysis = analyze(sql, ("public",), budget_seconds=10.0)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert analysis.error is None
    assert estimated_bytes(sql, analysis) >= held / 2


def test_cache_keeps_errors_too() -> None:
    cache = AnalysisCache()
    assert cache.analyze("SELEC", ()).error is not None
    assert cache.analyze("SELEC", ()).error is not None
    assert cache.hits == 1
