"""Builders for protocol messages and a driver for session machines, for playbook tests.

A playbook feeds a machine events (client bytes, server bytes, a wait that settled, a
cancel) and compares the actions it answers with the exact actions expected.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from custos.policy.source import FilePolicySource
from custos.protocol.framing import MessageFramer
from custos.session.actions import Action, SendToClient, SendToServer
from custos.session.decision import InProcessDecisionPoint
from custos.session.lexical import LexicalSettings
from custos.session.machine import SessionLimits, SessionMachine
from custos.session.policy_stage import PolicyStage
from custos.session.refusal import Refusal
from custos.session.stages import Outcome, Refuse, ResultRewriter, Settled, Stage, WaitFor
from custos.session.statement import Statement
from custos.session.texts import AnalysisWorkers, TextAnalyser
from custos.sql.cache import AnalysisCache

DEMO_POLICY = Path(__file__).resolve().parent.parent / "custos" / "demo" / "policy.yaml"


def message(kind: str, body: bytes = b"") -> bytes:
    return kind.encode() + struct.pack("!I", len(body) + 4) + body


def cstring(text: str | bytes) -> bytes:
    return (text.encode() if isinstance(text, str) else text) + b"\x00"


# --- client messages --------------------------------------------------------------------


def query(sql: str) -> bytes:
    return message("Q", cstring(sql))


def parse(name: str, sql: str, types: Sequence[int] = ()) -> bytes:
    body = cstring(name) + cstring(sql) + struct.pack("!h", len(types))
    return message("P", body + b"".join(struct.pack("!I", oid) for oid in types))


def bind(
    portal: str,
    statement: str,
    values: Sequence[bytes | None] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    body = cstring(portal) + cstring(statement) + struct.pack("!h", 0)
    body += struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    body += struct.pack("!h", len(result_formats))
    body += b"".join(struct.pack("!h", code) for code in result_formats)
    return message("B", body)


def describe(kind: str, name: str) -> bytes:
    return message("D", kind.encode() + cstring(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message("E", cstring(portal) + struct.pack("!i", max_rows))


def close(kind: str, name: str) -> bytes:
    return message("C", kind.encode() + cstring(name))


SYNC = message("S")
FLUSH = message("H")
TERMINATE = message("X")


def copy_data(data: bytes) -> bytes:
    return message("d", data)


COPY_DONE = message("c")


def function_call(oid: int = 1598) -> bytes:
    """A FunctionCall of `oid` with no arguments, its result in text."""
    return message("F", struct.pack("!Ihhh", oid, 0, 0, 0))


# --- server messages --------------------------------------------------------------------

PARSE_COMPLETE = message("1")
BIND_COMPLETE = message("2")
CLOSE_COMPLETE = message("3")
NO_DATA = message("n")
EMPTY_QUERY = message("I")
PORTAL_SUSPENDED = message("s")
SERVER_COPY_DONE = message("c")


def ready(status: str = "I") -> bytes:
    return message("Z", status.encode())


def row_description(*names: str, type_oid: int = 25, format_code: int = 0) -> bytes:
    body = struct.pack("!h", len(names))
    for name in names:
        body += cstring(name) + struct.pack("!IhIhih", 0, 0, type_oid, -1, -1, format_code)
    return message("T", body)


def parameter_description(*oids: int) -> bytes:
    return message("t", struct.pack("!h", len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


def data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return message("D", body)


def command_complete(tag: str) -> bytes:
    return message("C", cstring(tag))


def error(sqlstate: str, text: str, severity: str = "ERROR") -> bytes:
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", text)]
    return message("E", b"".join(code.encode() + cstring(value) for code, value in fields) + b"\0")


def notice(text: str) -> bytes:
    fields = [("S", "NOTICE"), ("V", "NOTICE"), ("C", "00000"), ("M", text)]
    return message("N", b"".join(code.encode() + cstring(value) for code, value in fields) + b"\0")


def notification(channel: str, payload: str) -> bytes:
    return message("A", struct.pack("!i", 42) + cstring(channel) + cstring(payload))


def parameter_status(name: str, value: str) -> bytes:
    return message("S", cstring(name) + cstring(value))


def copy_in_response(columns: int = 1) -> bytes:
    return message("G", struct.pack("!bh", 0, columns) + struct.pack("!h", 0) * columns)


def copy_out_response(columns: int = 1) -> bytes:
    return message("H", struct.pack("!bh", 0, columns) + struct.pack("!h", 0) * columns)


def refusal_block_error() -> bytes:
    """What the database answers to the gateway's refusal block."""
    from custos.session.own_messages import REFUSAL_MESSAGE

    return error("P0001", REFUSAL_MESSAGE)


# --- reading answers --------------------------------------------------------------------


def split(data: bytes) -> list[tuple[str, bytes]]:
    """A stream cut into (type, body) messages."""
    chunk, spans = MessageFramer(1 << 30, range(256)).feed(data)
    assert len(chunk) == len(data), "the stream ends inside a message"
    return [(chr(kind), chunk[start + 5 : end]) for kind, start, end in spans]


def types(data: bytes) -> str:
    return "".join(kind for kind, _ in split(data))


def sent_to_server(actions: Iterable[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendToServer))


def sent_to_client(actions: Iterable[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendToClient))


# --- machines ---------------------------------------------------------------------------


class RecordingStage(Stage):
    """Hears every outcome and, when asked, rewrites nothing but notes every answer."""

    hears_outcomes = True

    def __init__(self, rewrite: bool = False) -> None:
        self.outcomes: list[tuple[Statement, Outcome]] = []
        self.results: list[tuple[int, int, tuple[object, ...] | None]] = []
        self.rows: list[tuple[int, bytes]] = []
        self._rewrite = rewrite

    def plan(self, statement: Statement):  # type: ignore[no-untyped-def]
        from custos.session.stages import FORWARD, Rewrite

        if self._rewrite:
            return Rewrite(_Recorder(self))
        return FORWARD

    def finished(self, statement: Statement, outcome: Outcome) -> None:
        self.outcomes.append((statement, outcome))


class _Recorder(ResultRewriter):
    def __init__(self, stage: RecordingStage) -> None:
        self._stage = stage
        self._statement: Statement | None = None

    def result_started(self, statement: Statement, index: int) -> None:
        self._statement = statement
        columns = statement.columns
        self._stage.results.append(
            (statement.number, index, tuple(columns) if columns is not None else None)
        )

    def data_row(self, body: bytes) -> bytes | None:
        assert self._statement is not None
        self._stage.rows.append((self._statement.number, body))
        return None


def policy_stage(role: str = "agent") -> PolicyStage:
    return PolicyStage(role, InProcessDecisionPoint(FilePolicySource(DEMO_POLICY)))


def new_machine(
    stages: Sequence[Stage] | None = None,
    *,
    search_path: Sequence[str] = ("crm", "public"),
    lexical: LexicalSettings | None = None,
    limits: SessionLimits | None = None,
    exact_texts: bool = True,
    workers: AnalysisWorkers | None = None,
    # Generous: these machines test attribution, not budgets, and a busy machine (two
    # cores under a whole suite) can pause any analysis past the gateway's 0.2 s.
    budget_seconds: float = 5.0,
) -> SessionMachine:
    return SessionMachine(
        stages=[policy_stage()] if stages is None else stages,
        analyser=TextAnalyser(
            AnalysisCache(budget_seconds=budget_seconds), exact_texts=exact_texts, workers=workers
        ),
        search_path=search_path,
        lexical=lexical or LexicalSettings(),
        limits=limits or SessionLimits(),
        clock=lambda: 0.0,
    )


def statement_of(
    sql: str,
    search_path: Sequence[str] = ("crm", "public"),
    parameters: tuple[str | None, ...] = (),
) -> Statement:
    """A statement as a session would plan it, analysed under each schema of the path."""
    analyser = TextAnalyser(AnalysisCache(), exact_texts=True)
    return Statement(1, analyser.candidates(sql, tuple(search_path)), parameters)


async def planned(stage: Stage, statement: Statement) -> Refusal | None:
    """The stage's plan once every wait settled: its refusal, or None to go on."""
    plan = stage.plan(statement)
    while isinstance(plan, WaitFor):
        try:
            settled = Settled(await plan.awaitable)
        except Exception as failure:
            settled = Settled(error=failure)
        plan = plan.resume(settled)
    return plan.refusal if isinstance(plan, Refuse) else None
