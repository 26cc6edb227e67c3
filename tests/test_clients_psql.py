"""psql through the gateway prints exactly what it prints when connected directly."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from compare import SIDES, libpq_environment, run_program
from gateway_fixtures import GatewayProcess, client_program

# No psqlrc, no pager, every error with its SQLSTATE and source location.
_PSQL_OPTIONS = ("-X", "-P", "pager=off", "-v", "VERBOSITY=verbose", "-v", "ON_ERROR_STOP=0")


@pytest.fixture(scope="module")
def psql() -> str:
    return client_program("psql")


def _run_both(
    psql: str, gateway: GatewayProcess, *arguments: str, script: str | None = None, cwd: Path
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    direct, through = (
        run_program(
            psql,
            [*_PSQL_OPTIONS, *arguments],
            libpq_environment(gateway, side),
            input_text=script,
            cwd=str(cwd),
        )
        for side in SIDES
    )
    return direct, through


def _assert_same_run(
    direct: subprocess.CompletedProcess[str], through: subprocess.CompletedProcess[str]
) -> None:
    assert through.stdout == direct.stdout
    assert through.stderr == direct.stderr
    assert through.returncode == direct.returncode


def test_queries_errors_and_notices_print_the_same(
    psql: str, gateway: GatewayProcess, tmp_path: Path
) -> None:
    script = r"""
SELECT id, full_name, email, birth_date, created_at, marketing_opt_in
  FROM crm.customers ORDER BY id LIMIT 5;
SELECT status, count(*), sum(total_cents) FROM crm.orders GROUP BY status ORDER BY status;
SELECT 1::int2 AS small, 2::int8 AS big, 3.25::numeric(6, 2) AS num, 'a"b'::text AS txt,
       '\xdeadbeef'::bytea AS bin, '{1,2,3}'::int[] AS arr, '{"k": [1, null]}'::jsonb AS doc,
       'b0a4c8b6-7e5a-4c0c-9d63-1f5e0c9a1b2c'::uuid AS id, NULL AS nothing;
SELECT 1 AS first \; SELECT 2 AS second \; SELECT 'three' AS third;
SELECT 1 / 0;
SELECT 'after the error' AS still_running;
SELECT * FROM crm.no_such_table;
SELEC broken;
DO $$ BEGIN RAISE NOTICE 'a notice from plpgsql'; END $$;
DO $$ BEGIN RAISE WARNING 'a warning' USING DETAIL = 'with detail', HINT = 'and a hint'; END $$;
BEGIN;
SELECT 1 / 0;
SELECT 'in a failed transaction';
ROLLBACK;
SELECT 'after rollback' AS recovered;
\d crm.customers
\dt crm.*
"""
    direct, through = _run_both(psql, gateway, script=script, cwd=tmp_path)
    _assert_same_run(direct, through)
    assert "ERROR:  22012: division by zero" in through.stderr
    assert "NOTICE:  00000: a notice from plpgsql" in through.stderr
    assert "after the error" in through.stdout
    assert "recovered" in through.stdout
    assert "three" in through.stdout


def test_a_multi_statement_string_runs_as_one_query(
    psql: str, gateway: GatewayProcess, tmp_path: Path
) -> None:
    # psql -c sends the whole string as one Query message: one implicit transaction,
    # so the failing division rolls back the row inserted before it.
    command = (
        "CREATE TEMP TABLE multi (n int); INSERT INTO multi VALUES (1);"
        " SELECT n, 1 / (n - 1) FROM multi; SELECT 'never reached'"
    )
    direct, through = _run_both(psql, gateway, "-c", command, "-c", "SELECT 'next'", cwd=tmp_path)
    _assert_same_run(direct, through)
    assert "22012" in through.stderr
    assert "never reached" not in through.stdout
    assert "next" in through.stdout


def test_copy_to_and_from_files_matches_direct_byte_for_byte(
    psql: str, gateway: GatewayProcess, tmp_path: Path
) -> None:
    formats = {"text": "", "csv": " WITH (FORMAT csv, HEADER)", "binary": " WITH (FORMAT binary)"}
    files: dict[str, dict[str, bytes]] = {}
    digests: dict[str, str] = {}
    for side in SIDES:
        workdir = tmp_path / side
        workdir.mkdir()
        lines = [
            f"\\copy crm.customers TO 'customers.{name}'{how}" for name, how in formats.items()
        ]
        for name, how in formats.items():
            lines += [
                f"CREATE TEMP TABLE copy_{name} (LIKE crm.customers);",
                f"\\copy copy_{name} FROM 'customers.{name}'{how}",
                f"SELECT '{name}', count(*), md5(string_agg(c::text, '|' ORDER BY id))"
                f" FROM copy_{name} AS c;",
            ]
        lines.append(
            "SELECT 'source', count(*), md5(string_agg(c::text, '|' ORDER BY id))"
            " FROM crm.customers AS c;"
        )
        result = run_program(
            psql,
            [*_PSQL_OPTIONS, "-v", "ON_ERROR_STOP=1", "-A", "-t"],
            libpq_environment(gateway, side),
            input_text="\n".join(lines),
            cwd=str(workdir),
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        files[side] = {name: (workdir / f"customers.{name}").read_bytes() for name in formats}
        digests[side] = result.stdout
    assert files["gateway"] == files["direct"]
    assert digests["gateway"] == digests["direct"]
    # Every table loaded back holds exactly the source rows.
    copies = dict(
        line.split("|", 1) for line in digests["gateway"].splitlines() if line.count("|") == 2
    )
    assert set(copies) == {*formats, "source"}
    assert len(set(copies.values())) == 1
    assert copies["source"].startswith("5000|")


def test_copy_from_bad_data_fails_the_same_and_the_session_continues(
    psql: str, gateway: GatewayProcess, tmp_path: Path
) -> None:
    (tmp_path / "bad.txt").write_text("1\tone\nnot a number\ttwo\n")
    script = """
CREATE TEMP TABLE numbers (n int, word text);
\\copy numbers FROM 'bad.txt'
SELECT count(*) AS loaded FROM numbers;
"""
    direct, through = _run_both(psql, gateway, script=script, cwd=tmp_path)
    _assert_same_run(direct, through)
    assert "22P02" in through.stderr
    assert "loaded" in through.stdout


def test_inline_copy_from_stdin_loads_the_same(
    psql: str, gateway: GatewayProcess, tmp_path: Path
) -> None:
    script = """
CREATE TEMP TABLE inline (n int, word text);
COPY inline FROM STDIN;
1	one
2	two
\\N	nothing
\\.
COPY inline TO STDOUT WITH (FORMAT csv);
SELECT * FROM inline ORDER BY n NULLS FIRST;
"""
    direct, through = _run_both(psql, gateway, script=script, cwd=tmp_path)
    _assert_same_run(direct, through)
    assert "2,two" in through.stdout
    assert through.stderr == ""


def test_large_objects_go_in_and_out_through_function_calls(
    psql: str, gateway: GatewayProcess, tmp_path: Path
) -> None:
    # \lo_import and \lo_export drive libpq's lo_* functions, which speak the
    # protocol's FunctionCall message rather than queries.
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 4099)
    exported: dict[str, bytes] = {}
    for side in SIDES:
        script = f"""
\\lo_import '{source}'
\\set imported :LASTOID
\\lo_export :imported '{side}.bin'
SELECT length(lo_get(:imported)) AS stored;
\\lo_unlink :imported
"""
        result = run_program(
            psql,
            [*_PSQL_OPTIONS, "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t"],
            libpq_environment(gateway, side),
            input_text=script,
            cwd=str(tmp_path),
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.split() == [str(256 * 4099)]
        exported[side] = (tmp_path / f"{side}.bin").read_bytes()
    assert exported["gateway"] == exported["direct"] == source.read_bytes()


class _Terminal:
    """An interactive psql on a pseudo-terminal, as a person would run it."""

    def __init__(self, psql: str, environment: dict[str, str]) -> None:
        controller, terminal = pty.openpty()
        self._controller: int | None = controller
        self.output = b""
        # -n: no readline, so the terminal sees plain text rather than line-editing codes.
        self.process = subprocess.Popen(
            [psql, *_PSQL_OPTIONS, "-n"],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env={**environment, "TERM": "dumb"},
            start_new_session=True,
        )
        os.close(terminal)

    def send(self, line: str) -> None:
        assert self._controller is not None
        os.write(self._controller, line.encode() + b"\n")

    def read_until(self, text: str, timeout: float = 20) -> str:
        """Output up to and including `text`; fails if psql does not print it."""
        assert self._controller is not None
        needle = text.encode()
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                pytest.fail(f"psql did not print {text!r}; it printed:\n{self.output.decode()}")
            ready, _, _ = select.select([self._controller], [], [], remaining)
            if ready:
                try:
                    self.output += os.read(self._controller, 65536)
                except OSError:
                    continue
        before, _, after = self.output.partition(needle)
        self.output = after
        return (before + needle).decode()

    def close(self) -> int:
        if self._controller is None:
            return self.process.returncode
        if self.process.poll() is None:
            self.send("\\q")
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        os.close(self._controller)
        self._controller = None
        return self.process.returncode


@pytest.fixture
def terminal(
    psql: str, gateway: GatewayProcess, request: pytest.FixtureRequest
) -> Iterator[tuple[_Terminal, str]]:
    application = f"psql-cancel-{uuid.uuid4().hex[:8]}"
    environment = libpq_environment(gateway, request.param, application_name=application)
    session = _Terminal(psql, environment)
    try:
        yield session, application
    finally:
        session.close()


def _wait_until_running(gateway: GatewayProcess, application: str, query: str) -> None:
    """Returns once the database runs `query` for `application`, so the cancel meets it."""
    with psycopg.connect(gateway.upstream_dsn, autocommit=True) as observer:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            running = observer.execute(
                "SELECT 1 FROM pg_stat_activity"
                " WHERE application_name = %s AND state = 'active' AND query = %s",
                [application, query],
            ).fetchone()
            if running:
                return
            time.sleep(0.02)
    pytest.fail(f"{query!r} never started for {application}")


@pytest.mark.parametrize("terminal", SIDES, indirect=True)
def test_ctrl_c_cancels_the_running_statement_and_the_session_goes_on(
    terminal: tuple[_Terminal, str], gateway: GatewayProcess
) -> None:
    session, application = terminal
    session.read_until("=>")
    session.send("SELECT pg_sleep(30);")
    _wait_until_running(gateway, application, "SELECT pg_sleep(30);")
    session.process.send_signal(signal.SIGINT)
    printed = session.read_until("canceling statement due to user request")
    assert "ERROR:  57014: canceling statement due to user request" in printed
    session.read_until("=>")
    session.send("SELECT 6 * 7 AS answer;")
    assert "42" in session.read_until("(1 row)")
    assert session.close() == 0
