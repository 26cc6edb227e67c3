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
build knows: ErrorResponses are compared without those three fields, and such statements are
REFUSED rather than FAILED.
"""

from __future__ import annotations

import random
import select
import socket
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
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
    query,
    ready,
    row_description,
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
from custos.session.machine import SessionMachine
from custos.session.stages import Outcome, ResultRewriter, Rewrite, Status
from custos.session.statement import Statement
from custos.upstream.auth import UpstreamAuthExchange

# ErrorResponse fields only the database's own build knows: its source file, line, function.
SOURCE_LOCATION = frozenset("FLR")
# What the gateway refuses on its own, as PostgreSQL would fail it: text its parser rejects,
# a prepared statement or cursor it knows does not exist.
GATEWAY_REFUSES = frozenset({"42601", "26000", "34000"})
TIMEOUT_SECONDS = 10.0

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
            with_hold = " WITH HOLD" if hold else ""
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
    st.builds(
        Sql, st.just("declare"), st.tuples(st.sampled_from(PORTAL_NAMES[1:]), st.booleans())
    ),
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
    """Parse, Bind, Execute of one statement, as drivers send them; Sync after it or not."""

    statement: str
    portal: str
    sql: Sql
    formats: tuple[int, ...]
    max_rows: int
    sync: bool


FORMATS = st.sampled_from([(), (0,), (1,), (1, 0), (0, 1), (1, 1)])
VALUES = st.sampled_from([(), (b"5",)])
ROW_LIMITS = st.sampled_from([0, 0, 1, 2])
_SYNC_SPEC = "SYNC"
_FLUSH_SPEC = "FLUSH"

specs = st.one_of(
    st.builds(
        RunSpec,
        st.sampled_from(STATEMENT_NAMES),
        st.sampled_from(PORTAL_NAMES),
        sql_statements,
        FORMATS,
        ROW_LIMITS,
        st.booleans(),
    ),
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
    st.builds(QuerySpec, st.lists(query_statements, min_size=1, max_size=3).map(tuple)),
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


SYNC_MESSAGE = Message("S", "SYNC", SYNC)
FLUSH_MESSAGE = Message("H", "FLUSH", FLUSH)


def _query(sql: str) -> Message:
    return Message("Q", f"query({sql!r})", query(sql))


def build(drawn: list[object]) -> Program:
    tagger = Tagger()
    out: list[Message] = []
    for spec in drawn:
        if spec == _SYNC_SPEC:
            out.append(SYNC_MESSAGE)
        elif spec == _FLUSH_SPEC:
            out.append(FLUSH_MESSAGE)
        elif isinstance(spec, ParseSpec):
            out.append(_parse(spec.name, tagger.render(spec.sql)))
        elif isinstance(spec, BindSpec):
            out.append(_bind(spec.portal, spec.statement, spec.values, spec.formats))
        elif isinstance(spec, ExecuteSpec):
            out.append(_execute(spec.portal, spec.max_rows))
        elif isinstance(spec, TargetSpec):
            builder = describe if spec.kind == "describe" else close
            call = f"{spec.kind}({spec.target!r}, {spec.name!r})"
            out.append(Message(spec.kind[0].upper(), call, builder(spec.target, spec.name)))
        elif isinstance(spec, QuerySpec):
            out.append(_query("; ".join(tagger.render(sql) for sql in spec.statements)))
        elif isinstance(spec, RunSpec):
            values = (b"5",) if spec.sql.kind == "param" else ()
            out.append(_parse(spec.statement, tagger.render(spec.sql)))
            out.append(_bind(spec.portal, spec.statement, values, spec.formats))
            out.append(_execute(spec.portal, spec.max_rows))
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


programs = st.lists(specs, min_size=1, max_size=10).map(build)

# Ends every conversation and inspects it: a Sync (the program's last segment may have failed,
# and a Query is skipped then too), what the unnamed statement is (a Query would drop it),
# then out of any transaction the names the server holds.
PROBE = (
    "SELECT 's:' || name AS custos_probe FROM pg_prepared_statements"
    " UNION ALL SELECT 'p:' || name FROM pg_cursors ORDER BY 1"
)


def trailer(program: Program) -> tuple[Message, ...]:
    return (
        SYNC_MESSAGE,
        Message("D", "describe('S', '')", describe("S", "")),
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


@dataclass
class Walk:
    answers: dict[int, Answer]  # of each Query and Execute, by its position in the client's
    replies: dict[int, str]  # the types of the messages that answered each other message


def walk(client: Sequence[Message], stream: bytes) -> Walk:
    """Attributes the server's stream to the client's messages, by the protocol's rules alone."""
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
    replies: dict[int, str] = {}
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
                replies[position] = kind
                kind, _ = next_is("T", "n")
        else:
            raise AssertionError(m)
        replies[position] = replies.get(position, "") + kind
        skipping = kind == "E"
    if server:
        raise Unanswerable(f"the stream holds more than the client asked for: {list(server)}")
    return Walk(answers, replies)


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
    closed: str | None
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
    pg: PostgresServer, client_pieces: Sequence[bytes], rnd: random.Random
) -> MachineRun:
    sock = connect(pg)
    stage = JournalStage()
    machine = new_machine([stage])
    to_client: list[bytes] = []
    to_server: list[bytes] = []
    state = {"paused": False, "closed": None}

    def perform(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendToServer):
                to_server.append(action.data)
                sock.sendall(action.data)
            elif isinstance(action, SendToClient):
                to_client.append(action.data)
            elif isinstance(action, PauseReading) and action.side is Side.CLIENT:
                state["paused"] = True
            elif isinstance(action, ResumeReading) and action.side is Side.CLIENT:
                state["paused"] = False
            elif isinstance(action, CloseSession):
                state["closed"] = action.reason
            else:
                raise AssertionError(f"unexpected action {action!r} with no stage waiting")

    def read(timeout: float) -> bool:
        if not select.select([sock], [], [], timeout)[0]:
            return False
        data = sock.recv(65536)
        if not data:
            state["closed"] = state["closed"] or "the server closed the connection"
            return False
        for piece in resplit(data, rnd):
            perform(machine.server_data(piece))
        return True

    pending = deque(client_pieces)
    try:
        while state["closed"] is None:
            if pending and not state["paused"]:
                perform(machine.client_data(pending.popleft()))
                while read(0):
                    pass
                continue
            if not pending and probe_answered(b"".join(to_client)):
                break
            if not read(TIMEOUT_SECONDS):
                break
        # The gateway may still clean up after itself (its refusal block's statement).
        while state["closed"] is None and not machine.idle and read(TIMEOUT_SECONDS):
            pass
    finally:
        sock.close()
    return MachineRun(
        machine,
        stage,
        b"".join(to_client),
        b"".join(to_server),
        state["closed"],  # type: ignore[arg-type]
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
        return kind, {code: v for code, v in fields.items() if code not in SOURCE_LOCATION}
    return kind, body


def assert_same_stream(direct: bytes, through: bytes) -> None:
    """(a): message for message, ErrorResponses without their source location."""
    expected = [comparable(*m) for m in messages_of(direct)]
    got = [comparable(*m) for m in messages_of(through)]
    for position, (want, have) in enumerate(zip(expected, got, strict=False)):
        assert have == want, f"message {position} differs: direct {want!r}, through {have!r}"
    assert len(got) == len(expected), (
        f"direct sent {len(expected)} messages, the machine {len(got)}: "
        f"extra {expected[len(got) :] or got[len(expected) :]!r}"
    )


def statement_text(statement: Statement, index: int) -> str:
    texts = statement.analysis.texts
    return texts[index] if index < len(texts) else " ".join(texts)


def check_conversation(program: Program, direct: bytes, run: MachineRun) -> None:
    client = [*program.messages, *trailer(program)]
    oracle = walk(client, direct).answers
    numbers = segments(client)

    # The generator's own promise: every row the database sends carries its statement's tag.
    probe_at = len(client) - 1
    for position, answer in oracle.items():
        if position != probe_at:
            for body in answer.rows:
                assert tag_of(body) in program.columns, f"untagged row {body!r}"

    assert run.closed is None, f"the machine closed the session: {run.closed}"

    # (c) every statement the machine made has one outcome, matching the direct stream.
    outcomes: dict[int, tuple[Statement, Outcome]] = {}
    for statement, outcome in run.stage.outcomes:
        assert statement.number not in outcomes, f"{statement} finished twice"
        outcomes[statement.number] = (statement, outcome)
    assert sorted(outcomes) == list(range(1, len(outcomes) + 1)), "a statement never finished"
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
        assert len(found) == 1, f"{statement} matches client messages {found}"
        source[number] = found[0]
    unmatched = set(oracle) - set(source.values())
    for position in unmatched:
        answer = oracle[position]
        # An Execute of a portal the machine knows is missing is refused without a statement.
        assert client[position].kind == "E", f"no statement for {client[position]!r}"
        assert answer.status is Status.SKIPPED or answer.sqlstate == "34000", (
            f"no statement for {client[position]!r}, which the database ran: {answer}"
        )

    for number, (statement, outcome) in sorted(outcomes.items()):
        answer = oracle[source[number]]
        what = f"{client[source[number]]!r} (statement {number})"
        if answer.status is Status.FAILED and outcome.status is Status.REFUSED:
            assert answer.sqlstate in GATEWAY_REFUSES, (
                f"{what}: refused, where the database failed it with {answer.sqlstate}"
            )
        else:
            assert outcome.status is answer.status, (
                f"{what}: {outcome.status}, the database's answer says {answer.status}"
            )
        if outcome.status is Status.FAILED:
            assert outcome.sqlstate == answer.sqlstate, f"{what}: sqlstate {outcome.sqlstate}"
        assert list(outcome.tags) == answer.tags, f"{what}: tags {outcome.tags}"
        assert outcome.rows == len(answer.rows), f"{what}: {outcome.rows} rows"

    # (b) the rows each statement's rewriter saw are the database's for that statement, carry
    # its tag, and the columns it was told describe them.
    seen: dict[int, list[bytes]] = {}
    for number, index, columns, body in run.stage.journal:
        seen.setdefault(number, []).append(body)
        statement, _ = outcomes[number]
        if source[number] == probe_at:
            continue
        tag = tag_of(body)
        assert tag is not None, f"statement {number} got an untagged row {body!r}"
        assert f"'tag-{tag}'" in statement_text(statement, index), (
            f"statement {number} ({statement_text(statement, index)!r}) got tag-{tag}'s row"
        )
        values = row_values(body)
        assert columns is not None, f"statement {number}'s rewriter was not told its columns"
        expected = program.columns[tag]
        assert [(c.name, c.type_oid) for c in columns] == list(expected), (
            f"statement {number} was told columns {columns} for tag-{tag}'s row"
        )
        for column, value in zip(columns, values, strict=True):
            if column.type_oid == 23 and value is not None:
                binary = len(value) == 4 and not value.isdigit()
                assert column.format == int(binary), (
                    f"statement {number}: column {column.name!r} told format"
                    f" {column.format} for value {value!r}"
                )
    for number in outcomes:
        assert seen.get(number, []) == oracle[source[number]].rows, (
            f"statement {number} ({client[source[number]]!r}) saw rows {seen.get(number)},"
            f" the database sent {oracle[source[number]].rows}"
        )

    # (a) the client cannot tell the machine is there.
    assert_same_stream(direct, run.to_client)

    # (d) the machine ends idle, knowing what the server holds.
    assert run.idle, "the machine is not idle after the conversation"
    through = walk(client, run.to_client)
    names = {row_values(body)[0] for body in through.answers[probe_at].rows}
    statements = {name[2:] for name in names if name and name.startswith(b"s:")}
    portals = {name[2:] for name in names if name and name.startswith(b"p:")}
    if through.replies[len(client) - 4] != "E":  # the trailer's Describe of the unnamed one
        statements.add(b"")
    assert set(run.machine.prepared_statements) == statements, "prepared statements differ"
    assert set(run.machine.portals) == portals, "portals differ"


@settings(
    max_examples=60,
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
    data = program.data + b"".join(m.data for m in trailer(program))
    direct = run_direct(pg, data)
    pieces = [data[i : i + 1] for i in range(len(data))] if client_bytewise else cut(data, client_cuts)
    # How the socket chunks the server's answers varies run to run; how they are re-split then
    # follows from the seed alone, so hypothesis sees no draw that depends on the network.
    run = run_through_machine(pg, pieces, random.Random(seed))
    check_conversation(program, direct, run)
