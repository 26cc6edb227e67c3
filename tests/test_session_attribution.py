"""The session machine against a real PostgreSQL: what it attributes, and what the client gets.

A grammar of client conversations (extended and simple protocol, good and bad SQL, missing
and duplicate names, row limits, Flush and Sync anywhere, transactions) is run twice on two
fresh superuser connections: once DIRECT, once THROUGH a SessionMachine whose only stage
records every answer (no policy). The direct run is the oracle:

(a) the client gets through the machine what it gets directly, message for message;
(b) every DataRow the machine gives a statement's rewriter is one the database sent for that
    statement, and carries the statement's own identifying value (each statement that
    returns rows returns 'tag-<k>', unique in the conversation), with the columns the
    rewriter was told;
(c) every statement's outcome is what the direct stream shows for it: SKIPPED after an
    earlier error in its segment, FAILED when the database raised an error, SUSPENDED at a
    row limit, COMPLETED otherwise, with the same tags and row count;
(d) at the end the machine is idle, and its prepared statements and portals are those the
    server lists (asked through the machine).

Errors the gateway raises itself stand in for the database's (a refusal: text its parser
rejects, a name it knows does not exist). They carry the same SQLSTATE, message and position,
but not the database's source location (File, Line, Routine), which only the database's
build knows: ErrorResponses are compared without those three fields, and such a statement is
REFUSED where the database would have FAILED it (or SKIPPED its stand-in).

Also here: the machine fed one recorded conversation whole (the server's side as whole as
causality allows: no answer before its request), a byte at a time, or cut anywhere gives the
same actions; and whatever bytes either side sends, it never raises.

PostgreSQL 15 itself crashes on one construct of such grammars (see `query_statements`).
"""

from __future__ import annotations

import random
import select
import socket
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from playbook import (
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    EMPTY_QUERY,
    FLUSH,
    NO_DATA,
    PARSE_COMPLETE,
    PORTAL_SUSPENDED,
    SYNC,
    RecordingStage,
    bind,
    close,
    command_complete,
    data_row,
    describe,
    error,
    execute,
    message,
    new_machine,
    notice,
    parameter_description,
    parameter_status,
    parse,
    policy_stage,
    query,
    ready,
    refusal_block_error,
    row_description,
    sent_to_client,
    sent_to_server,
    types,
)

from custos.demo.postgres import PostgresServer
from custos.protocol.backend import Column
from custos.protocol.framing import MessageFramer
from custos.protocol.messages import parse_notice, startup_message
from custos.session.actions import (
    Action,
    CloseSession,
    PauseReading,
    ResumeReading,
    SendToClient,
    SendToServer,
    Side,
)
from custos.session.machine import SessionMachine, SessionState
from custos.session.stages import Outcome, ResultRewriter, Rewrite, Status
from custos.session.statement import Statement
from custos.upstream.auth import UpstreamAuthExchange

# ErrorResponse fields only the database's own build knows: its source file, line, function.
SOURCE_LOCATION = frozenset("FLR")
# What the gateway refuses on its own, as PostgreSQL would fail it: text its parser rejects,
# a prepared statement or cursor it knows does not exist.
GATEWAY_REFUSES = frozenset({"42601", "26000", "34000"})
TIMEOUT_SECONDS = 10.0
STALL_SECONDS = 2.0

# The machine's bugs this test found, each with its own failing test below (marked xfail).
# Until one is fixed, the grammar steers clear of it, or the check that meets it names it
# instead of failing; delete its line once its xfail test passes, and the property covers it.
KNOWN_BUGS = {
    "string_refused_up_front": "test_a_missing_execute_target_fails_where_postgresql_fails",
    "close_all_spares_running_portal": "test_close_all_spares_the_portal_that_runs_it",
}

# --- a raw connection to the real server ----------------------------------------------------


def connect(pg: PostgresServer) -> socket.socket:
    """A superuser session over TCP, logged in (SCRAM), at its first ReadyForQuery."""
    sock = socket.create_connection((pg.host, pg.port), timeout=TIMEOUT_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(startup_message({"user": pg.superuser, "database": pg.database}))
    auth = UpstreamAuthExchange(pg.superuser, pg.superuser_password)
    buffered = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection during login"
        buffered += chunk
        while len(buffered) >= 5:
            (length,) = struct.unpack_from("!I", buffered, 1)
            if len(buffered) < 1 + length:
                break
            kind, body, buffered = buffered[0:1], buffered[5 : 1 + length], buffered[1 + length :]
            if kind == b"R":
                answer = auth.on_authentication(body)
                if answer:
                    sock.sendall(answer)
            elif kind == b"E":
                raise AssertionError(f"login failed: {parse_notice(body).fields}")
            elif kind == b"Z":
                assert not buffered
                return sock


def messages_of(stream: bytes) -> list[tuple[str, bytes]]:
    """The whole messages of a stream, as (type, body); a partial one at the end is left out."""
    _, spans = MessageFramer(1 << 30, range(256)).feed(stream)
    return [(chr(kind), stream[start + 5 : end]) for kind, start, end in spans]


# --- the grammar -------------------------------------------------------------------------------

STATEMENT_NAMES = ("", "s1", "s2")
PORTAL_NAMES = ("", "p1", "p2")
ROWS_COLUMNS = ((b"tag", 25), (b"n", 23))
TAG_COLUMN = ((b"tag", 25),)


def _rows(k: int, rows: int) -> str:
    return f"SELECT 'tag-{k}'::text AS tag, i AS n FROM generate_series(1, {rows}) AS i"


@dataclass(frozen=True)
class Sql:
    """One SQL statement of the grammar, before its tag is given."""

    kind: str
    arg: object = None


@dataclass
class Tagger:
    """Numbers the statements that return rows, and remembers the columns each returns."""

    next: int = 1
    columns: dict[int, tuple[tuple[bytes, int], ...]] = field(default_factory=dict)

    def tag(self, columns: tuple[tuple[bytes, int], ...]) -> int:
        k = self.next
        self.next += 1
        self.columns[k] = columns
        return k

    def render(self, sql: Sql) -> str:
        kind, arg = sql.kind, sql.arg
        if kind == "rows":
            return _rows(self.tag(ROWS_COLUMNS), int(arg))  # type: ignore[call-overload]
        if kind == "no_rows":
            return f"SELECT 'tag-{self.tag(TAG_COLUMN)}'::text AS tag WHERE false"
        if kind == "param":
            return f"SELECT 'tag-{self.tag(ROWS_COLUMNS)}'::text AS tag, $1::int AS n"
        if kind == "fails_midway":  # rows 1..arg-1, then division by zero at Execute
            k = self.tag(ROWS_COLUMNS)
            return (
                f"SELECT 'tag-{k}'::text AS tag, 1 / ({arg} - i) AS n"
                f" FROM generate_series(1, {arg}) AS i"
            )
        if kind == "fails_planning":  # constant-folded: Bind (or the Query) fails
            return f"SELECT 'tag-{self.tag(ROWS_COLUMNS)}'::text AS tag, 1 / 0 AS n"
        if kind == "bad_syntax":
            k = self.tag(TAG_COLUMN)
            return f"SELEC 'tag-{k}'" if arg else f"SELECT 'tag-{k}'::text AS tag FROM"
        if kind == "undefined_table":
            return f"SELECT 'tag-{self.tag(TAG_COLUMN)}'::text AS tag FROM no_such_table"
        if kind == "empty":
            return ""
        if kind in ("BEGIN", "COMMIT", "ROLLBACK"):
            return kind
        if kind == "set":
            return f"SET application_name = 'tag-{self.tag(())}'"
        if kind == "prepare":
            return f"PREPARE {arg} AS {_rows(self.tag(ROWS_COLUMNS), 2)}"
        if kind == "execute":
            return f"EXECUTE {arg}"
        if kind == "deallocate":
            return f"DEALLOCATE {arg}"
        if kind == "declare":
            name, hold = arg  # type: ignore[misc]
            with_hold = (
                " WITH HOLD"
                if hold and "hold_cursor_of_failed_transaction" not in KNOWN_BUGS
                else ""
            )
            return f"DECLARE {name} CURSOR{with_hold} FOR {_rows(self.tag(ROWS_COLUMNS), 3)}"
        if kind == "fetch":
            return f"FETCH 2 FROM {arg}"
        if kind == "close_cursor":
            return f"CLOSE {arg}"
        raise AssertionError(kind)


sql_statements = st.one_of(
    st.builds(Sql, st.just("rows"), st.integers(1, 4)),
    st.sampled_from(
        [
            Sql("no_rows"),
            Sql("param"),
            Sql("fails_planning"),
            Sql("undefined_table"),
            Sql("BEGIN"),
            Sql("COMMIT"),
            Sql("ROLLBACK"),
            Sql("set"),
            Sql("empty"),
        ]
    ),
    st.builds(Sql, st.just("fails_midway"), st.integers(1, 3)),
    st.builds(Sql, st.just("bad_syntax"), st.booleans()),
    st.builds(Sql, st.just("prepare"), st.sampled_from(STATEMENT_NAMES[1:])),
    st.builds(Sql, st.just("execute"), st.sampled_from(STATEMENT_NAMES[1:])),
    st.builds(Sql, st.just("deallocate"), st.sampled_from([*STATEMENT_NAMES[1:], "ALL"])),
    st.builds(Sql, st.just("declare"), st.tuples(st.sampled_from(PORTAL_NAMES[1:]), st.booleans())),
    st.builds(Sql, st.just("close_cursor"), st.sampled_from([*PORTAL_NAMES[1:], "ALL"])),
)
# PostgreSQL 15 crashes (SIGSEGV, the whole cluster restarts) on a Describe of a prepared
# FETCH or of its portal once the cursor is gone: `query("BEGIN; DECLARE c CURSOR FOR
# SELECT 1") + parse("f", "FETCH 2 FROM c") + bind("x", "f") + SYNC + query("CLOSE c") +
# describe("P", "x") + SYNC`. So FETCH goes only in simple Queries.
query_statements = st.one_of(
    sql_statements, st.builds(Sql, st.just("fetch"), st.sampled_from(PORTAL_NAMES[1:]))
)


# A client message: its builder call (for a falsifying example one can paste into a playbook)
# and what the oracle needs of it.
@dataclass(frozen=True)
class Message:
    kind: str  # the frontend message type: P B D E C H S Q
    call: str  # the playbook builder call that makes it
    data: bytes
    portal: str = ""  # Execute's portal
    max_rows: int = 0  # Execute's row limit

    def __repr__(self) -> str:
        return self.call


@dataclass(frozen=True)
class Program:
    """A client conversation: its messages, then the trailer that ends and inspects it."""

    messages: tuple[Message, ...]
    columns: dict[int, tuple[tuple[bytes, int], ...]]  # by tag: what its rows hold

    def __repr__(self) -> str:
        return " + ".join(map(repr, self.messages)) or "b''"

    @property
    def data(self) -> bytes:
        return b"".join(m.data for m in self.messages)


# Specs drawn by hypothesis; `build` renders them into messages with unique tags.
@dataclass(frozen=True)
class ParseSpec:
    name: str
    sql: Sql


@dataclass(frozen=True)
class BindSpec:
    portal: str
    statement: str
    values: tuple[bytes, ...]
    formats: tuple[int, ...]


@dataclass(frozen=True)
class ExecuteSpec:
    portal: str
    max_rows: int


@dataclass(frozen=True)
class TargetSpec:
    kind: str  # Describe or Close
    target: str  # S or P
    name: str


@dataclass(frozen=True)
class QuerySpec:
    statements: tuple[Sql, ...]


@dataclass(frozen=True)
class RunSpec:
    """Parse, Bind and Executes of one statement, as drivers send them (a named statement
    Closed first, as a driver that reuses the name would); Sync after or not."""

    statement: str
    portal: str
    sql: Sql
    formats: tuple[int, ...]
    row_limits: tuple[int, ...]  # one Execute each: a suspended portal runs on
    sync: bool


FORMATS = st.sampled_from([(), (0,), (1,), (1, 0), (0, 1), (1, 1)])
VALUES = st.sampled_from([(), (b"5",)])
ROW_LIMITS = st.sampled_from([0, 1, 2])
_SYNC_SPEC = "SYNC"
_FLUSH_SPEC = "FLUSH"

# Most statements return rows, so that results, limits and attribution are exercised as much
# as errors and skipping.
rows = st.builds(Sql, st.just("rows"), st.integers(1, 5))
runs = st.builds(
    RunSpec,
    st.sampled_from(["", *STATEMENT_NAMES]),  # drivers mostly use the unnamed statement
    st.sampled_from(["", *PORTAL_NAMES]),
    st.one_of(rows, rows, rows, sql_statements),
    FORMATS,
    st.lists(ROW_LIMITS, min_size=1, max_size=3).map(tuple),
    st.sampled_from([True, True, False]),
)
# A portal run a few rows at a time: suspended, then resumed.
resumed_runs = st.builds(
    RunSpec,
    st.sampled_from(["", *STATEMENT_NAMES]),
    st.sampled_from(["", *PORTAL_NAMES]),
    st.builds(Sql, st.just("rows"), st.integers(3, 5)),
    FORMATS,
    st.lists(st.sampled_from([1, 2]), min_size=2, max_size=3).map(tuple),
    st.sampled_from([True, True, False]),
)
specs = st.one_of(
    runs,
    runs,
    resumed_runs,
    st.builds(ParseSpec, st.sampled_from(STATEMENT_NAMES), sql_statements),
    st.builds(
        BindSpec,
        st.sampled_from(PORTAL_NAMES),
        st.sampled_from(STATEMENT_NAMES),
        VALUES,
        FORMATS,
    ),
    st.builds(ExecuteSpec, st.sampled_from(PORTAL_NAMES), ROW_LIMITS),
    st.just(_SYNC_SPEC),
    st.just(_SYNC_SPEC),
    st.builds(
        QuerySpec, st.lists(st.one_of(rows, query_statements), min_size=1, max_size=3).map(tuple)
    ),
    st.builds(
        TargetSpec,
        st.sampled_from(["describe", "close"]),
        st.sampled_from("SP"),
        st.sampled_from(("", "s1", "p1")),
    ),
    st.just(_FLUSH_SPEC),
)


def _parse(name: str, sql: str) -> Message:
    return Message("P", f"parse({name!r}, {sql!r})", parse(name, sql))


def _bind(portal: str, statement: str, values: Sequence[bytes], formats: Sequence[int]) -> Message:
    call = f"bind({portal!r}, {statement!r}, {list(values)!r}, {list(formats)!r})"
    return Message("B", call, bind(portal, statement, values, formats))


def _execute(portal: str, max_rows: int) -> Message:
    call = f"execute({portal!r}, {max_rows})"
    return Message("E", call, execute(portal, max_rows), portal=portal, max_rows=max_rows)


def _target(kind: str, target: str, name: str) -> Message:
    builder = describe if kind == "describe" else close
    return Message(kind[0].upper(), f"{kind}({target!r}, {name!r})", builder(target, name))


SYNC_MESSAGE = Message("S", "SYNC", SYNC)
FLUSH_MESSAGE = Message("H", "FLUSH", FLUSH)


def _query(sql: str) -> Message:
    return Message("Q", f"query({sql!r})", query(sql))


def steer_clear_of_known_bugs(name: str | None, statements: Sequence[Sql]) -> list[Sql]:
    """The statements of a Parse (`name`) or a query string (None), without what triggers a
    known bug that would hide every other difference behind it."""
    result = list(statements)
    if name == "" and "refused_unnamed_parse" in KNOWN_BUGS:
        result = [Sql("undefined_table") if sql.kind == "bad_syntax" else sql for sql in result]
    if "deallocate_all_forgets_unnamed" in KNOWN_BUGS:
        result = [
            Sql("deallocate", "s1") if sql == Sql("deallocate", "ALL") else sql for sql in result
        ]
    if name is not None and "close_all_spares_running_portal" in KNOWN_BUGS:
        result = [
            Sql("close_cursor", "p1") if sql == Sql("close_cursor", "ALL") else sql
            for sql in result
        ]
    if name is None and "string_refused_up_front" in KNOWN_BUGS:
        # EXECUTE or FETCH after the first statement only of what the string itself made.
        made: set[object] = set()
        for position, sql in enumerate(result):
            if sql.kind in ("prepare", "deallocate", "declare", "close_cursor"):
                target = sql.arg[0] if isinstance(sql.arg, tuple) else sql.arg
                if sql.kind in ("prepare", "declare"):
                    made.add(target)
                else:
                    made = set() if target == "ALL" else made - {target}
            elif sql.kind in ("execute", "fetch") and position > 0 and sql.arg not in made:
                result[position] = Sql("no_rows")
    return result


def build(drawn: list[object]) -> Program:
    tagger = Tagger()
    out: list[Message] = []
    for spec in drawn:
        if spec == _SYNC_SPEC:
            out.append(SYNC_MESSAGE)
        elif spec == _FLUSH_SPEC:
            out.append(FLUSH_MESSAGE)
        elif isinstance(spec, ParseSpec):
            (sql,) = steer_clear_of_known_bugs(spec.name, [spec.sql])
            out.append(_parse(spec.name, tagger.render(sql)))
        elif isinstance(spec, BindSpec):
            out.append(_bind(spec.portal, spec.statement, spec.values, spec.formats))
        elif isinstance(spec, ExecuteSpec):
            out.append(_execute(spec.portal, spec.max_rows))
        elif isinstance(spec, TargetSpec):
            out.append(_target(spec.kind, spec.target, spec.name))
        elif isinstance(spec, QuerySpec):
            statements = steer_clear_of_known_bugs(None, spec.statements)
            out.append(_query("; ".join(tagger.render(sql) for sql in statements)))
        elif isinstance(spec, RunSpec):
            values = (b"5",) if spec.sql.kind == "param" else ()
            (sql,) = steer_clear_of_known_bugs(spec.statement, [spec.sql])
            if spec.statement:
                out.append(_target("close", "S", spec.statement))
            out.append(_parse(spec.statement, tagger.render(sql)))
            out.append(_bind(spec.portal, spec.statement, values, spec.formats))
            out.extend(_execute(spec.portal, limit) for limit in spec.row_limits)
            if spec.sync:
                out.append(SYNC_MESSAGE)
    return Program(tuple(unique_executes(out)), tagger.columns)


def unique_executes(program: list[Message]) -> list[Message]:
    """Gives every Execute of a segment its own row limit, so that the machine's statements
    (which know their segment and limit) name the message they came from. A limit larger
    than the rows left is as good as none, so meaning is kept."""
    used: set[int] = set()
    result = []
    for m in program:
        if m.kind in "SQ":
            used = set()
        elif m.kind == "E":
            limit = m.max_rows
            if limit == 0 and 0 in used:
                limit = 1000
            while limit in used:
                limit += 1
            used.add(limit)
            m = _execute(m.portal, limit)
        result.append(m)
    return result


programs = st.lists(specs, min_size=2, max_size=10).map(build)

# Ends every conversation and inspects it: a Sync (the program's last segment may have failed,
# and a Query is skipped then too), a Describe of the unnamed statement (whether it exists,
# which the Queries after it drop), then out of any transaction the names the server holds.
PROBE = (
    "SELECT 's:' || name AS custos_probe FROM pg_prepared_statements"
    + (
        " WHERE name NOT LIKE 'custos_refusal%'"
        if "refusal_statement_visible" in KNOWN_BUGS
        else ""
    )
    + " UNION ALL SELECT 'p:' || name FROM pg_cursors ORDER BY 1"
)


def trailer(program: Program) -> tuple[Message, ...]:
    return (
        SYNC_MESSAGE,
        _target("describe", "S", ""),
        SYNC_MESSAGE,
        _query("ROLLBACK"),
        _query(PROBE),
    )


def probe_answered(stream: bytes) -> bool:
    """Whether the stream holds the probe's answers to its end (its ReadyForQuery)."""
    seen_probe = False
    for kind, body in messages_of(stream):
        if kind == "T" and b"custos_probe\x00" in body:
            seen_probe = True
        elif kind == "Z" and seen_probe:
            return True
    return False


# --- the oracle: what the database did with each client message, from the direct stream -----


@dataclass
class Answer:
    """The database's answer to one Query or Execute."""

    status: Status
    rows: list[bytes] = field(default_factory=list)  # DataRow bodies, in order
    tags: list[str] = field(default_factory=list)
    sqlstate: str | None = None


class Unanswerable(AssertionError):
    """The server's stream does not answer the client's messages as the protocol says."""


def walk(client: Sequence[Message], stream: bytes) -> dict[int, Answer]:
    """Attributes the server's stream to the client's messages, by the protocol's rules alone:
    the answer to each Query and Execute, by its position in `client`."""
    server = deque(
        (kind, body) for kind, body in messages_of(stream) if kind not in "NSA"
    )  # notices, settings and notifications come anywhere

    def next_is(*kinds: str) -> tuple[str, bytes]:
        if not server:
            raise Unanswerable(f"the stream ended where {'/'.join(kinds)} was due")
        kind, body = server.popleft()
        if kind not in kinds:
            raise Unanswerable(f"{kind} came where {'/'.join(kinds)} was due")
        return kind, body

    answers: dict[int, Answer] = {}
    skipping = False
    for position, m in enumerate(client):
        if m.kind == "S":
            if server and server[0][0] == "E":
                server.popleft()  # a commit that failed at Sync
            next_is("Z")
            skipping = False
            continue
        if skipping:
            if m.kind in "EQ":  # PostgreSQL skips even a Query until Sync
                answers[position] = Answer(Status.SKIPPED)
            continue
        if m.kind == "H":
            continue
        if m.kind == "Q":
            answer = answers[position] = Answer(Status.COMPLETED)
            while True:
                kind, body = next_is("T", "D", "C", "I", "E", "Z")
                if kind == "D":
                    answer.rows.append(body)
                elif kind == "C":
                    answer.tags.append(body.rstrip(b"\0").decode())
                elif kind == "E":
                    answer.status = Status.FAILED
                    answer.sqlstate = parse_notice(body).sqlstate
                elif kind == "Z":
                    break
            continue
        if m.kind == "E":
            answer = answers[position] = Answer(Status.COMPLETED)
            while True:
                kind, body = next_is("D", "C", "I", "s", "E")
                if kind == "D":
                    answer.rows.append(body)
                    continue
                if kind == "C":
                    answer.tags.append(body.rstrip(b"\0").decode())
                elif kind == "s":
                    answer.status = Status.SUSPENDED
                elif kind == "E":
                    answer.status = Status.FAILED
                    answer.sqlstate = parse_notice(body).sqlstate
                    skipping = True
                break
            continue
        if m.kind == "P":
            kind, _ = next_is("1", "E")
        elif m.kind == "B":
            kind, _ = next_is("2", "E")
        elif m.kind == "C":
            kind, _ = next_is("3", "E")
        elif m.kind == "D":
            kind, _ = next_is("t", "T", "n", "E")
            if kind == "t":
                kind, _ = next_is("T", "n")
        else:
            raise AssertionError(m)
        skipping = kind == "E"
    if server:
        raise Unanswerable(f"the stream holds more than the client asked for: {list(server)}")
    return answers


def segments(client: Sequence[Message]) -> list[int]:
    """Each message's segment as the machine numbers them: sync points sent before it."""
    numbers, segment = [], 0
    for m in client:
        numbers.append(segment)
        if m.kind in "SQ":
            segment += 1
    return numbers


def row_values(body: bytes) -> list[bytes | None]:
    (count,) = struct.unpack_from("!h", body)
    values: list[bytes | None] = []
    position = 2
    for _ in range(count):
        (length,) = struct.unpack_from("!i", body, position)
        position += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[position : position + length])
            position += length
    return values


def tag_of(body: bytes) -> int | None:
    values = row_values(body)
    first = values[0] if values else None
    if first is None or not first.startswith(b"tag-"):
        return None
    return int(first[4:])


# --- the run through the machine ---------------------------------------------------------------


class JournalStage(RecordingStage):
    """RecordingStage(rewrite=True) that also keeps results and rows in the order they came."""

    def __init__(self) -> None:
        super().__init__(rewrite=True)
        self.journal: list[tuple[int, int, tuple[Column, ...] | None, bytes]] = []

    def plan(self, statement: Statement) -> Rewrite:
        return Rewrite(_JournalRecorder(self))


class _JournalRecorder(ResultRewriter):
    def __init__(self, stage: JournalStage) -> None:
        self._stage = stage
        self._statement: Statement | None = None
        self._index = 0

    def result_started(self, statement: Statement, index: int) -> None:
        self._statement = statement
        self._index = index
        columns = statement.columns
        self._stage.results.append(
            (statement.number, index, tuple(columns) if columns is not None else None)
        )

    def data_row(self, body: bytes) -> bytes | None:
        statement = self._statement
        assert statement is not None, "a row before its result started"
        self._stage.rows.append((statement.number, body))
        columns = statement.columns
        self._stage.journal.append(
            (statement.number, self._index, tuple(columns) if columns is not None else None, body)
        )
        return None


@dataclass
class MachineRun:
    machine: SessionMachine
    stage: JournalStage
    to_client: bytes
    to_server: bytes
    from_server: bytes
    # Where in `from_server` the machine sent more in answer: what follows may answer that,
    # so a replay must not feed the machine across these in one piece.
    causal_cuts: list[int]
    closed: str | None  # why the machine closed the session, if it did
    holding: bool  # whether the machine held the client's messages back when the run ended
    idle: bool


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    pieces, previous = [], 0
    for mark in [*marks, len(data)]:
        if mark > previous:
            pieces.append(data[previous:mark])
        previous = mark
    return pieces


def resplit(data: bytes, rnd: random.Random) -> list[bytes]:
    """A chunk read from the server, fed whole, at random cuts, or a few bytes at a time."""
    way = rnd.random()
    if way < 0.4:
        return [data]
    if way < 0.85:
        return cut(data, [rnd.randrange(len(data) + 1) for _ in range(rnd.randint(1, 6))])
    step = rnd.randint(1, 3)
    return [data[i : i + step] for i in range(0, len(data), step)]


def run_through_machine(
    pg: PostgresServer,
    client_pieces: Sequence[bytes],
    rnd: random.Random,
    stall_seconds: float = TIMEOUT_SECONDS,
) -> MachineRun:
    """Feeds the client's pieces to a machine as a network adapter would (not while it pauses
    the client), carries out its actions on a real connection, and feeds it what comes back."""
    sock = connect(pg)
    stage = JournalStage()
    machine = new_machine([stage])
    to_client: list[bytes] = []
    to_server: list[bytes] = []
    from_server: list[bytes] = []
    causal_cuts: list[int] = []
    received = 0
    paused = False
    closed: str | None = None

    def perform(actions: list[Action]) -> None:
        nonlocal paused, closed
        for action in actions:
            if isinstance(action, SendToServer):
                to_server.append(action.data)
                sock.sendall(action.data)
            elif isinstance(action, SendToClient):
                to_client.append(action.data)
            elif isinstance(action, PauseReading) and action.side is Side.CLIENT:
                paused = True
            elif isinstance(action, ResumeReading) and action.side is Side.CLIENT:
                paused = False
            elif isinstance(action, CloseSession):
                closed = action.reason
            else:
                raise AssertionError(f"unexpected action {action!r}: no stage waits or pauses")

    def read(timeout: float) -> bool:
        nonlocal closed, received
        if not select.select([sock], [], [], timeout)[0]:
            return False
        data = sock.recv(65536)
        if not data:
            closed = closed or "the server closed the connection"
            return False
        from_server.append(data)
        received += len(data)
        sent = len(to_server)
        for piece in resplit(data, rnd):
            perform(machine.server_data(piece))
        if len(to_server) > sent:
            causal_cuts.append(received)
        return True

    pending = deque(client_pieces)
    try:
        while closed is None:
            if pending and not paused:
                perform(machine.client_data(pending.popleft()))
                while read(0):
                    pass
                continue
            if not pending and probe_answered(b"".join(to_client)):
                break
            # The server answers these statements in milliseconds: a machine that holds the
            # client's messages back and hears nothing for long waits for what never comes.
            holding = machine.state is SessionState.HOLDING
            if not read(stall_seconds if holding else TIMEOUT_SECONDS):
                break
        if probe_answered(b"".join(to_client)):
            # The gateway may still clean up after itself (its refusal block's statement).
            while closed is None and not machine.idle and read(STALL_SECONDS):
                pass
    finally:
        sock.close()
    return MachineRun(
        machine,
        stage,
        b"".join(to_client),
        b"".join(to_server),
        b"".join(from_server),
        causal_cuts,
        closed,
        machine.state is SessionState.HOLDING,
        machine.idle,
    )


def run_direct(pg: PostgresServer, data: bytes) -> bytes:
    sock = connect(pg)
    try:
        sock.sendall(data)
        received = b""
        while not probe_answered(received):
            ready_to_read = select.select([sock], [], [], TIMEOUT_SECONDS)[0]
            assert ready_to_read, f"the server stopped answering: {messages_of(received)[-5:]}"
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            received += chunk
        return received
    finally:
        sock.close()


# --- the properties ----------------------------------------------------------------------------


def comparable(kind: str, body: bytes) -> tuple[str, object]:
    if kind == "E":
        fields = parse_notice(body).fields
        if (
            "unnamed_statement_message" in KNOWN_BUGS
            and fields.get("M") == 'prepared statement "" does not exist'
        ):
            fields = {**fields, "M": "unnamed prepared statement does not exist"}
        return kind, {code: v for code, v in fields.items() if code not in SOURCE_LOCATION}
    return kind, body


def stream_differences(direct: bytes, through: bytes) -> list[str]:
    """(a): message for message, ErrorResponses without their source location."""
    expected = [comparable(*m) for m in messages_of(direct)]
    got = [comparable(*m) for m in messages_of(through)]
    for position, (want, have) in enumerate(zip(expected, got, strict=False)):
        if have != want:
            return [f"(a) message {position} differs: direct {want!r}, through {have!r}"]
    if len(got) != len(expected):
        return [
            f"(a) direct sent {len(expected)} messages, the machine {len(got)}:"
            f" extra {expected[len(got) :] or got[len(expected) :]!r}"
        ]
    return []


def statement_text(statement: Statement, index: int) -> str:
    texts = statement.analysis.texts
    return texts[index] if index < len(texts) else " ".join(texts)


def check_conversation(program: Program, direct: bytes, run: MachineRun) -> list[str]:
    """What differs between the direct conversation and the one through the machine."""
    client = [*program.messages, *trailer(program)]
    oracle = walk(client, direct)
    numbers = segments(client)
    probe_at = len(client) - 1
    problems: list[str] = []

    # The generator's own promise: every row the database sends carries its statement's tag.
    for position, answer in oracle.items():
        if position != probe_at:
            for body in answer.rows:
                assert tag_of(body) in program.columns, f"untagged row {body!r}"

    if run.closed is not None:
        problems.append(f"the machine closed the session: {run.closed}")
    if not probe_answered(run.to_client):
        skipped_queries = [
            client[p]
            for p, a in oracle.items()
            if client[p].kind == "Q" and a.status is Status.SKIPPED
        ]
        if "skipped_query_hangs" in KNOWN_BUGS and skipped_queries and run.holding:
            return problems
        return [
            *problems,
            f"hang: the conversation stalled {'(holding) ' if run.holding else ''}after"
            f" {len(messages_of(run.to_client))} of {len(messages_of(direct))} messages;"
            f" queries the database skipped: {skipped_queries}",
        ]

    # (c) every statement the machine made has one outcome, matching the direct stream.
    outcomes: dict[int, tuple[Statement, Outcome]] = {}
    for statement, outcome in run.stage.outcomes:
        if statement.number in outcomes:
            problems.append(f"(c) statement {statement.number} finished twice")
        outcomes[statement.number] = (statement, outcome)
    if sorted(outcomes) != list(range(1, len(outcomes) + 1)):
        problems.append(f"(c) a statement never finished: {sorted(outcomes)}")
    source: dict[int, int] = {}  # statement number: position of its client message
    for number, (statement, _) in outcomes.items():
        if statement.portal_name is None:
            found = [
                p for p, m in enumerate(client) if m.kind == "Q" and numbers[p] == statement.segment
            ]
        else:
            found = [
                p
                for p, m in enumerate(client)
                if m.kind == "E"
                and numbers[p] == statement.segment
                and m.max_rows == statement.max_rows
            ]
        if len(found) != 1:
            problems.append(f"(c) statement {number} matches client messages {found}")
            continue
        source[number] = found[0]
    for position in sorted(set(oracle) - set(source.values())):
        answer = oracle[position]
        # An Execute of a portal the machine knows is missing is refused without a statement.
        if client[position].kind != "E" or not (
            answer.status is Status.SKIPPED or answer.sqlstate == "34000"
        ):
            problems.append(f"(c) no statement for {client[position]!r}: the database {answer}")

    for number, (statement, outcome) in sorted(outcomes.items()):
        if number not in source:
            continue
        answer = oracle[source[number]]
        what = f"{client[source[number]]!r} (statement {number})"
        status = outcome.status
        if status is Status.REFUSED and answer.status is Status.FAILED:
            # In a failed transaction the database fails the gateway's stand-in as it would
            # have failed the statement.
            if answer.sqlstate not in GATEWAY_REFUSES | {"25P02"}:
                problems.append(f"(c) {what}: refused; the database failed it ({answer.sqlstate})")
        elif status is Status.REFUSED and answer.status is Status.SKIPPED:
            # A statement the gateway refused is REFUSED even where the database skipped its
            # stand-in; but an Execute with no text of its own was refused for another message.
            misattributed = statement.portal_name is not None and not statement.candidates
            if misattributed and "unnamed_portal_refusal" not in KNOWN_BUGS:
                problems.append(
                    f"(c) {what}: refused ({outcome.sqlstate}); the database skipped it"
                )
        elif status is not answer.status:
            problems.append(f"(c) {what}: {status}; the database's answer says {answer.status}")
        if status is Status.FAILED and outcome.sqlstate != answer.sqlstate:
            problems.append(f"(c) {what}: sqlstate {outcome.sqlstate}, not {answer.sqlstate}")
        if list(outcome.tags) != answer.tags:
            problems.append(f"(c) {what}: tags {list(outcome.tags)}, not {answer.tags}")
        if outcome.rows != len(answer.rows):
            problems.append(f"(c) {what}: {outcome.rows} rows, not {len(answer.rows)}")

    # (b) the rows each statement's rewriter saw are the database's for that statement, carry
    # its tag, and the columns it was told describe them.
    seen: dict[int, list[bytes]] = {}
    for number, index, columns, body in run.stage.journal:
        seen.setdefault(number, []).append(body)
        if number not in source or source[number] == probe_at:
            continue
        statement, _ = outcomes[number]
        tag = tag_of(body)
        if tag is None or f"'tag-{tag}'" not in statement_text(statement, index):
            problems.append(
                f"(b) statement {number} ({statement_text(statement, index)!r}) got row {body!r}"
            )
            continue
        if columns is None:
            problems.append(f"(b) statement {number}'s rewriter was not told its columns")
            continue
        if [(c.name, c.type_oid) for c in columns] != list(program.columns[tag]):
            problems.append(f"(b) statement {number} was told columns {columns} for tag-{tag}")
            continue
        for column, value in zip(columns, row_values(body), strict=True):
            if column.type_oid == 23 and value is not None:
                binary = len(value) == 4 and not value.isdigit()
                if column.format != int(binary):
                    problems.append(
                        f"(b) statement {number}: column {column.name!r} told format"
                        f" {column.format} for value {value!r}"
                    )
    for number in source:
        if seen.get(number, []) != oracle[source[number]].rows:
            problems.append(
                f"(b) statement {number} ({client[source[number]]!r}) saw rows"
                f" {seen.get(number, [])}; the database sent {oracle[source[number]].rows}"
            )

    # (a) the client cannot tell the machine is there.
    problems.extend(stream_differences(direct, run.to_client))

    # (d) the machine ends idle, knowing what the server holds. The trailer's Queries dropped
    # the unnamed statement, and ended every transaction.
    if not run.idle:
        problems.append("(d) the machine is not idle after the conversation")
    try:
        through = walk(client, run.to_client)
    except Unanswerable as unanswerable:
        problems.append(f"(d) the client's stream does not answer its messages: {unanswerable}")
        return problems
    names = {row_values(body)[0] for body in through[probe_at].rows}
    statements = {name[2:] for name in names if name and name.startswith(b"s:")}
    portals = {name[2:] for name in names if name and name.startswith(b"p:")}
    believed = set(run.machine.prepared_statements)
    if believed != statements:
        problems.append(
            f"(d) prepared statements: the machine has {believed}, the server {statements}"
        )
    if set(run.machine.portals) != portals:
        problems.append(
            f"(d) portals: the machine has {set(run.machine.portals)}, the server {portals}"
        )
    return problems


@settings(
    max_examples=150,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    program=programs,
    client_cuts=st.lists(st.integers(0, 1 << 16), max_size=8),
    client_bytewise=st.booleans(),
    seed=st.integers(0, 1 << 32),
)
def test_the_machine_attributes_every_answer_as_the_database_gave_it(
    pg: PostgresServer,
    program: Program,
    client_cuts: list[int],
    client_bytewise: bool,
    seed: int,
) -> None:
    note(f"client sends: {program!r}")
    data = program.data + b"".join(m.data for m in trailer(program))
    direct = run_direct(pg, data)
    client = [*program.messages, *trailer(program)]
    skipped_query = any(
        client[p].kind == "Q" and a.status is Status.SKIPPED
        for p, a in walk(client, direct).items()
    )
    pieces = (
        [data[i : i + 1] for i in range(len(data))] if client_bytewise else cut(data, client_cuts)
    )
    # How the socket chunks the server's answers varies run to run; how they are re-split then
    # follows from the seed alone, so hypothesis sees no draw that depends on the network.
    run = run_through_machine(
        pg, pieces, random.Random(seed), STALL_SECONDS if skipped_query else TIMEOUT_SECONDS
    )
    problems = check_conversation(program, direct, run)
    assert not problems, "\n".join(problems)


# --- the known bugs, each at its smallest ---------------------------------------------------


def converse(pg: PostgresServer, data: bytes) -> tuple[bytes, MachineRun]:
    """A conversation direct and through a machine (the trailer's probe ends both)."""
    data += SYNC + query("ROLLBACK") + query(PROBE)
    return run_direct(pg, data), run_through_machine(pg, [data], random.Random(0), STALL_SECONDS)


@pytest.mark.parametrize("target", ["S", "P"])
def test_describing_a_fetch_of_a_closed_cursor_is_refused(pg: PostgresServer, target: str) -> None:
    # PostgreSQL 15 crashes describing a prepared FETCH whose cursor has been closed, and
    # restarts every session of the server; the gateway refuses the Describe instead, as
    # unsafe (only through the machine: the direct run would crash the tests' server).
    prepared = (
        query("BEGIN") + query("DECLARE c CURSOR FOR SELECT 1") + parse("s", "FETCH 1 FROM c")
    )
    described = describe("S", "s") if target == "S" else bind("p", "s") + describe("P", "p")
    data = prepared + query("CLOSE c") + described + SYNC + query("ROLLBACK") + query("SELECT 7")
    run = run_through_machine(pg, [data], random.Random(0), STALL_SECONDS)
    answers = messages_of(run.to_client)
    errors = [parse_notice(body).sqlstate for kind, body in answers if kind == "E"]
    assert errors == ["0A000"]
    assert run.closed is None
    assert answers[-3:] == [
        ("D", b"\x00\x01\x00\x00\x00\x017"),
        ("C", b"SELECT 1\x00"),
        ("Z", b"I"),
    ]


def outcome_of(run: MachineRun, number: int) -> Outcome:
    return next(outcome for statement, outcome in run.stage.outcomes if statement.number == number)


def test_a_query_the_database_skips_does_not_hang_the_session() -> None:
    machine = new_machine([RecordingStage()])
    request = (
        parse("", "SELECT * FROM nope") + query("SELECT 1") + bind("", "") + execute("") + SYNC
    )
    sent = sent_to_server(machine.client_data(request))
    # After the Parse fails, PostgreSQL skips everything up to Sync, the Query included: no
    # ReadyForQuery answers it. The Bind of the statement the failed segment touched must not
    # wait for one, or the Sync never goes and both sides wait for ever.
    sent += sent_to_server(machine.server_data(error("42P01", 'relation "nope" does not exist')))
    assert "S" in types(sent)[types(sent).index("Q") :]
    assert machine.state is SessionState.RELAYING


def test_a_query_sent_after_the_error_does_not_hang_the_session() -> None:
    # As above, but the Describe's error arrives before the client's next messages (how the
    # network cuts them decides): the Query then goes where the database skips it, and the
    # Execute waits for a ReadyForQuery that never comes. The Sync after it is never sent.
    machine = new_machine([RecordingStage()])
    sent = sent_to_server(machine.client_data(describe("P", "nope")))
    sent += sent_to_server(machine.server_data(error("34000", 'portal "nope" does not exist')))
    sent += sent_to_server(machine.client_data(query("SELECT 1") + execute("") + SYNC))
    assert "S" in types(sent)[types(sent).index("Q") :]
    assert machine.state is SessionState.RELAYING


def test_a_simple_query_drops_the_unnamed_statement(pg: PostgresServer) -> None:
    direct, run = converse(pg, parse("", "SELECT 1") + SYNC + query("SELECT 2"))
    assert stream_differences(direct, run.to_client) == []
    # PostgreSQL runs a simple Query in the unnamed statement, dropping the client's.
    assert b"" not in run.machine.prepared_statements


def test_a_refused_parse_drops_the_unnamed_statement(pg: PostgresServer) -> None:
    # PostgreSQL drops the unnamed statement before it parses the new text, so a Parse that
    # fails leaves none; the gateway refuses the text without sending it, and the old statement
    # stays: the Bind below runs `SELECT 1` and returns its row instead of failing with 26000.
    direct, run = converse(
        pg,
        parse("", "SELECT 1")
        + SYNC
        + parse("", "SELEC 1")
        + SYNC
        + bind("", "")
        + execute("")
        + SYNC,
    )
    assert stream_differences(direct, run.to_client) == []


def test_the_refusal_blocks_statement_is_never_visible(pg: PostgresServer) -> None:
    # The refusal block's prepared statement is gone before a query pipelined behind the
    # refusal can list it.
    direct, run = converse(
        pg, execute("no_such_portal") + SYNC + query("SELECT name FROM pg_prepared_statements")
    )
    assert stream_differences(direct, run.to_client) == []


def test_the_refusal_blocks_statement_is_closed_after_skipped_ones(pg: PostgresServer) -> None:
    # Two refused Queries the database skips after the refused Execute's error: the block's
    # statement stays, and the client's next query lists it.
    refused = execute("nope") + query("FETCH 2 FROM nope") + query("FETCH 2 FROM nope")
    direct, run = converse(pg, refused + SYNC + query("SELECT name FROM pg_prepared_statements"))
    assert stream_differences(direct, run.to_client) == []


@pytest.mark.xfail(strict=True, reason="known bug string_refused_up_front")
def test_a_missing_execute_target_fails_where_postgresql_fails(pg: PostgresServer) -> None:
    # PostgreSQL runs `SELECT 1` (its row reaches the client) before EXECUTE fails; the gateway
    # refuses the whole string first. With an earlier error (`CLOSE nope; EXECUTE s9`) the
    # client even gets another SQLSTATE (26000, not 34000).
    direct, run = converse(pg, query("SELECT 1; EXECUTE s9"))
    assert stream_differences(direct, run.to_client) == []
    assert outcome_of(run, 1).tags == ("SELECT 1",)


def test_a_missing_unnamed_statement_has_postgresqls_message(pg: PostgresServer) -> None:
    _, run = converse(pg, bind("", "") + SYNC)
    errors = [
        parse_notice(body).fields["M"] for kind, body in messages_of(run.to_client) if kind == "E"
    ]
    # PostgreSQL: "unnamed prepared statement does not exist"; the gateway: 'prepared
    # statement "" does not exist'.
    assert errors[0] == "unnamed prepared statement does not exist"


def test_an_execute_skipped_after_a_refusal_is_skipped(pg: PostgresServer) -> None:
    # The refused Bind's stand-in binds the unnamed portal, and the machine takes the Execute
    # that follows for the stand-in's: the database skipped it, yet it is reported REFUSED with
    # the Bind's refusal (26000), which it never had.
    _, run = converse(pg, bind("", "no_such_statement") + execute("") + SYNC)
    assert outcome_of(run, 1).status is Status.SKIPPED


def test_a_hold_cursor_of_a_failed_transaction_is_gone(pg: PostgresServer) -> None:
    # A WITH HOLD cursor survives the end of the transaction that declared it only if that
    # transaction commits; the machine keeps it after a rollback too.
    declare = parse("", "DECLARE c1 CURSOR WITH HOLD FOR SELECT 1") + bind("", "") + execute("")
    direct, run = converse(pg, declare + parse("", "SELECT 1/0") + bind("", "") + SYNC)
    assert stream_differences(direct, run.to_client) == []
    assert run.machine.portals == {}


def test_deallocate_all_keeps_the_unnamed_statement(pg: PostgresServer) -> None:
    # DEALLOCATE ALL drops the named prepared statements only; the machine forgets the unnamed
    # one too, and refuses (26000) the Bind that PostgreSQL runs.
    deallocate_all = parse("d", "DEALLOCATE ALL") + bind("x", "d") + execute("x")
    direct, run = converse(
        pg, parse("", "SELECT 1") + deallocate_all + SYNC + bind("", "") + execute("") + SYNC
    )
    assert stream_differences(direct, run.to_client) == []


@pytest.mark.parametrize(
    "refused",
    [
        parse("", "SELEC 1") + SYNC,
        parse("s", "SELEC 1") + bind("", "s") + execute("") + SYNC,
        bind("", "no_such_statement") + execute("") + SYNC,
        execute("no_such_portal") + SYNC,
        query("FETCH 1 FROM no_such_cursor"),
        query("EXECUTE no_such_statement"),
    ],
    ids=["parse", "parse_then_bind", "bind", "execute", "fetch", "execute_sql"],
)
def test_a_refusal_in_a_failed_transaction_answers_as_postgresql(
    pg: PostgresServer, refused: bytes
) -> None:
    failed = query("BEGIN") + query("SELECT 1/0")
    direct, run = converse(pg, failed + refused + query("ROLLBACK") + query("SELECT 1"))
    assert stream_differences(direct, run.to_client) == []


def test_a_refusal_in_a_failed_transaction_keeps_its_error(pg: PostgresServer) -> None:
    # PostgreSQL parses (and looks up names) before it checks for a failed transaction, so the
    # client gets the syntax error; the gateway's stand-in fails with 25P02 instead. Likewise
    # for the Bind of a missing statement (26000) and the Execute of a missing portal (34000).
    _, run = converse(pg, query("BEGIN") + query("SELECT 1/0") + query("SELEC 1"))
    errors = [
        parse_notice(body).sqlstate for kind, body in messages_of(run.to_client) if kind == "E"
    ]
    assert errors[:2] == ["22012", "42601"]


def test_an_execute_the_database_fails_is_failed(pg: PostgresServer) -> None:
    # The machine asks for the portal's columns (its own Describe, cut from the answers) before
    # the Execute; in a failed transaction the Describe fails first (25P02), as the Execute
    # would have, and the Execute is reported SKIPPED though the client got its error. Also
    # for a portal the machine wrongly believes exists: `parse("", "COMMIT") + bind("p", "") +
    # execute("p") + execute("p")` (the COMMIT dropped p; 34000).
    bound = parse("s", "SELECT 1") + bind("p", "s") + SYNC
    _, run = converse(pg, query("BEGIN") + bound + query("SELECT 1/0") + execute("p") + SYNC)
    assert outcome_of(run, 3).status is Status.FAILED
    assert outcome_of(run, 3).sqlstate == "25P02"


@pytest.mark.xfail(strict=True, reason="known bug close_all_spares_running_portal")
def test_close_all_spares_the_portal_that_runs_it(pg: PostgresServer) -> None:
    # CLOSE ALL closes every portal but the one running it; the machine forgets that one too,
    # and refuses its next Execute with 34000 where PostgreSQL answers 55000 ("cannot be run").
    close_all = parse("", "CLOSE ALL") + bind("", "") + execute("", 0)
    direct, run = converse(pg, close_all + execute("", 0) + SYNC)
    assert stream_differences(direct, run.to_client) == []


def test_a_refused_statement_can_be_shown_to_its_stages() -> None:
    # A stage hears the outcome of a statement the gateway refused before reading it; it can
    # show it (repr, or its `analysis` for an audit record) without its text.
    stage = RecordingStage()
    machine = new_machine([stage])
    machine.client_data(query("SELEC 1"))
    machine.server_data(refusal_block_error() + ready())
    ((statement, outcome),) = stage.outcomes
    assert outcome.status is Status.REFUSED
    assert repr(statement) == "<Statement 1 refused 42601>"
    assert statement.analysis.statements == ()
    assert statement.analysis.error is not None


# --- the same conversation, however it is split ---------------------------------------------

RECORDED = (
    query("BEGIN")
    + parse("s1", _rows(1, 3))
    + describe("S", "s1")
    + bind("p1", "s1", [], [1, 0])
    + execute("p1", 2)
    + FLUSH
    + execute("p1", 0)
    + parse("s2", "SELEC 'tag-2'")
    + execute("p1", 0)
    + SYNC
    + query(f"ROLLBACK; {_rows(3, 2)}; SELECT 1/0; {_rows(4, 1)}")
    + parse("", "SELECT 'tag-5'::text AS tag, 1 / (3 - i) AS n FROM generate_series(1, 3) AS i")
    + bind("", "")
    + execute("", 0)
    + SYNC
    + query(f"PREPARE s3 AS {_rows(6, 2)}; EXECUTE s3; DEALLOCATE s3")
    + bind("", "s1", [], [1])
    + describe("P", "")
    + execute("", 1)
    + execute("", 5)
    + SYNC
    + bind("p2", "no_such_statement")
    + SYNC
    + query("SET application_name = 'tag-7'")
    + query("SELEC 'tag-8'")
    + parse("", "")
    + bind("", "")
    + execute("")
    + close("S", "s1")
    + SYNC
)


@dataclass(frozen=True)
class Replayed:
    to_server: bytes
    to_client: bytes
    outcomes: list[tuple[int, Status, tuple[str, ...], int, str | None]]
    journal: list[tuple[int, int, tuple[Column, ...] | None, bytes]]
    prepared: set[bytes]
    portals: set[bytes]
    idle: bool


def replay(client: Sequence[bytes], server: Sequence[bytes]) -> Replayed:
    """A machine fed all the client's pieces, then all the server's, as they were recorded."""
    stage = JournalStage()
    machine = new_machine([stage])
    actions = [action for piece in client for action in machine.client_data(piece)]
    actions += [action for piece in server for action in machine.server_data(piece)]
    assert all(
        isinstance(a, (SendToServer, SendToClient, PauseReading, ResumeReading)) for a in actions
    )
    return Replayed(
        sent_to_server(actions),
        sent_to_client(actions),
        [(s.number, o.status, o.tags, o.rows, o.sqlstate) for s, o in stage.outcomes],
        stage.journal,
        set(machine.prepared_statements),
        set(machine.portals),
        machine.idle,
    )


@dataclass(frozen=True)
class Recorded:
    client: bytes
    server: bytes
    causal_cuts: list[int]  # the server's stream is never fed across these in one piece
    whole: Replayed  # what a machine made of it, each side fed as whole as it can be


@pytest.fixture(scope="module")
def recorded(pg: PostgresServer) -> Recorded:
    """RECORDED through a machine on a real connection, all of it sent at once."""
    data = RECORDED + query(PROBE)
    direct = run_direct(pg, data)
    run = run_through_machine(pg, [data], random.Random(0))
    assert stream_differences(direct, run.to_client) == []
    # Where the machine held messages back until earlier answers came, the answers to them
    # come after those: no piece of the server's stream can hold both.
    assert run.causal_cuts
    whole = replay([data], cut(run.from_server, run.causal_cuts))
    assert whole.to_server == run.to_server
    assert whole.to_client == run.to_client
    assert whole.idle
    statuses = [status for _, status, *_ in whole.outcomes]
    assert {Status.COMPLETED, Status.SUSPENDED, Status.FAILED, Status.REFUSED} <= set(statuses)
    return Recorded(data, run.from_server, run.causal_cuts, whole)


def test_a_recorded_conversation_fed_a_byte_at_a_time_gives_the_same_actions(
    recorded: Recorded,
) -> None:
    client, server = recorded.client, recorded.server
    one_by_one = [client[i : i + 1] for i in range(len(client))]
    server_bytes = [server[i : i + 1] for i in range(len(server))]
    assert replay(one_by_one, cut(server, recorded.causal_cuts)) == recorded.whole
    assert replay([client], server_bytes) == recorded.whole
    assert replay(one_by_one, server_bytes) == recorded.whole


@settings(max_examples=100, derandomize=True, database=None)
@given(
    client_cuts=st.lists(st.integers(0, 1 << 16), max_size=12),
    server_cuts=st.lists(st.integers(0, 1 << 16), max_size=12),
)
def test_a_recorded_conversation_split_anywhere_gives_the_same_actions(
    recorded: Recorded, client_cuts: list[int], server_cuts: list[int]
) -> None:
    client = cut(recorded.client, client_cuts)
    server = cut(recorded.server, [*server_cuts, *recorded.causal_cuts])
    assert replay(client, server) == recorded.whole


# --- anything at all, from either side ---------------------------------------------------------

_names = st.sampled_from(["", "s1", "p1", "x" * 70])
_sql = st.sampled_from(
    [
        "SELECT 1",
        "SELEC",
        "BEGIN",
        "COMMIT",
        "",
        "SELECT 1; SELECT 2",
        "EXECUTE s1",
        "FETCH 1 FROM p1",
        "DECLARE p1 CURSOR FOR SELECT 1",
        "PREPARE s1 AS SELECT 1",
        "SET search_path TO x",
        "COPY t FROM STDIN",
    ]
)
frontend_messages = st.one_of(
    st.builds(query, _sql),
    st.builds(parse, _names, _sql),
    st.builds(
        bind,
        _names,
        _names,
        st.sampled_from([(), (b"1",), (None,)]),
        st.sampled_from([(), (1,), (0, 1)]),
    ),
    st.builds(describe, st.sampled_from("SPX"), _names),
    st.builds(execute, _names, st.integers(-1, 3)),
    st.builds(close, st.sampled_from("SP"), _names),
    st.sampled_from(
        [
            SYNC,
            FLUSH,
            message("d", b"1\n"),
            message("c"),
            message("f", b"no\0"),
            message("X"),
            message("F", b"\0\0\0\1\0\0\0\0\0\0"),
        ]
    ),
)
backend_messages = st.one_of(
    st.sampled_from(
        [
            PARSE_COMPLETE,
            BIND_COMPLETE,
            CLOSE_COMPLETE,
            NO_DATA,
            EMPTY_QUERY,
            PORTAL_SUSPENDED,
            message("c"),
        ]
    ),
    st.builds(ready, st.sampled_from("ITE")),
    st.builds(
        row_description,
        st.just("a"),
        type_oid=st.sampled_from([23, 25]),
        format_code=st.sampled_from([0, 1]),
    ),
    st.builds(data_row, st.sampled_from([b"1", b"\0\0\0\1", b""])),
    st.builds(
        command_complete,
        st.sampled_from(
            ["SELECT 1", "BEGIN", "COMMIT", "ROLLBACK", "PREPARE", "DECLARE CURSOR", "SET"]
        ),
    ),
    st.builds(
        error,
        st.sampled_from(["42601", "22012", "P0001", "25P02"]),
        st.sampled_from(["boom", "statement refused by the custos gateway"]),
        st.sampled_from(["ERROR", "FATAL"]),
    ),
    st.builds(notice, st.just("hm")),
    st.builds(
        parameter_status,
        st.sampled_from(["client_encoding", "standard_conforming_strings", "search_path"]),
        st.sampled_from(["UTF8", "SJIS", "off", "x"]),
    ),
    st.builds(parameter_description, st.just(23)),
    st.sampled_from(
        [
            message("G", b"\0\0\1\0\0"),
            message("H", b"\0\0\1\0\0"),
            message("d", b"x"),
            message("W", b"\0\0\0"),
        ]
    ),
)
garbage = st.binary(min_size=1, max_size=40)
events = st.lists(
    st.one_of(
        st.tuples(st.just("client"), st.one_of(frontend_messages, garbage)),
        st.tuples(st.just("server"), st.one_of(backend_messages, garbage)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, derandomize=True, database=None)
@given(
    events=events,
    cuts=st.lists(st.integers(0, 1 << 16), max_size=6),
    bytewise=st.booleans(),
    with_policy=st.booleans(),
)
def test_whatever_either_side_sends_the_machine_never_raises(
    events: list[tuple[str, bytes]], cuts: list[int], bytewise: bool, with_policy: bool
) -> None:
    # Each side's bytes, cut anywhere (messages may straddle events); the machine may end the
    # session with its own error, and must then stay closed.
    stages = [policy_stage(), RecordingStage(rewrite=True)] if with_policy else [JournalStage()]
    machine = new_machine(stages)
    closed = False
    for side, data in events:
        pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else cut(data, cuts)
        for piece in pieces:
            actions = machine.client_data(piece) if side == "client" else machine.server_data(piece)
            if closed:
                assert not any(isinstance(a, (SendToServer, CloseSession)) for a in actions)
            closed = closed or any(isinstance(a, CloseSession) for a in actions)
