"""The local audit store: append-only JSON Lines segment files, laid out as the S3 archive
is: a folder per table (`events/`, `subject_access/`), then `dt=YYYY-MM-DD/hour=HH/`.

`append` writes a batch of events and data-subject index rows (a chunk's statements,
every session's at that moment) and makes it durable with one fsync per file: a group
commit. A segment is this process's for its table and hour; a new hour, or a new process,
starts a new one, so no file is ever written twice.
`verify_store` reads every segment and checks each session's chain (chain.py), and names
any line that is not an event (a torn write, an edit).
"""

from __future__ import annotations

import gzip
import os
import re
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath

from pydantic import ValidationError

from custos.audit.chain import ChainProblem, EventRecord, record_line, verify_chain
from custos.audit.events import AuditEvent, SubjectAccess

EVENTS = "events"
SUBJECT_ACCESS = "subject_access"
TABLES = (EVENTS, SUBJECT_ACCESS)
_FOLDERS_KEPT = 64
FSYNC_SECONDS = 1.0
"""With `durability: process`, how long written records may wait for their fsync."""


def segment_directory(root: Path, moment: datetime, table: str = EVENTS) -> Path:
    """Where a table's records of an hour go: `TABLE/dt=YYYY-MM-DD/hour=HH` (UTC)."""
    return root / table / hour_directory(moment)


def hour_directory(moment: datetime) -> Path:
    moment = moment.astimezone(UTC)
    return Path(f"dt={moment:%Y-%m-%d}") / f"hour={moment:%H}"


def folder_hour(folder: PurePath) -> datetime:
    """The hour a `dt=YYYY-MM-DD/hour=HH` folder (or a file in one) holds."""
    parts = folder.parts
    at = next(index for index, part in enumerate(parts) if part.startswith("dt="))
    day, hour = parts[at].removeprefix("dt="), parts[at + 1].removeprefix("hour=")
    return datetime.fromisoformat(f"{day}T{hour}:00:00+00:00")


def record_hours(root: Path) -> list[datetime]:
    """The hours some table holds segment files of, oldest first."""
    return sorted({folder_hour(path) for table in TABLES for path in segments(root, table)})


class LocalStore:
    """Appends audit records to segment files under `root`, durably."""

    def __init__(self, root: Path, *, fsync_each: bool = True, compress: bool = False) -> None:
        """`fsync_each` false: a batch is durable once the operating system holds it (it
        survives the gateway's crash, not the machine's), and the files are fsynced at
        least every FSYNC_SECONDS. `compress`: segments are gzipped, each batch a gzip
        member of its own, so that a file stays appendable and each batch whole on disk."""
        self._root = root
        self._fsync_each = fsync_each
        self._compress = compress
        self._folders: dict[tuple[str, int], Path] = {}
        self._synced_at = time.monotonic()
        self._open: dict[str, tuple[Path, int]] = {}  # table -> its segment's folder, file

    def append(self, events: Sequence[EventRecord], subjects: Sequence[SubjectAccess] = ()) -> None:
        """Writes the records, in order, and returns once they are on disk."""
        lines: dict[tuple[str, Path], list[bytes]] = {}
        folders = self._folders
        # The index's rows first: a reader that sees an event sees the rows it refers to.
        for table, records in ((SUBJECT_ACCESS, subjects), (EVENTS, events)):
            for record in records:
                # The folder by the record's hour since the epoch: every record of an hour
                # spares the folder's name being worked out again.
                key = (table, int(record.time.timestamp()) // 3600)
                directory = folders.get(key)
                if directory is None:
                    if len(folders) > _FOLDERS_KEPT:
                        folders.clear()
                    directory = folders[key] = segment_directory(self._root, record.time, table)
                lines.setdefault((table, directory), []).append(record_line(record))
        for (table, directory), batch in lines.items():
            descriptor = self._segment(table, directory)
            data = b"".join(batch)
            if self._compress:
                data = gzip.compress(data, compresslevel=1, mtime=0)
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
            if self._fsync_each:
                os.fsync(descriptor)
        if not self._fsync_each and time.monotonic() - self._synced_at >= FSYNC_SECONDS:
            self._sync()

    def _sync(self) -> None:
        for _, descriptor in self._open.values():
            os.fsync(descriptor)
        self._synced_at = time.monotonic()

    @property
    def writes_quickly(self) -> bool:
        return True  # a local write and fsync take a fraction of a millisecond

    def close(self) -> None:
        if not self._fsync_each:
            self._sync()
        for _, descriptor in self._open.values():
            os.close(descriptor)
        self._open.clear()

    def _segment(self, table: str, directory: Path) -> int:
        current = self._open.get(table)
        if current is not None:
            if current[0] == directory:
                return current[1]
            if not self._fsync_each:
                os.fsync(current[1])
            os.close(current[1])
            del self._open[table]
        directory.mkdir(parents=True, exist_ok=True)
        # Named to sort in the order segments were started (to the nanosecond), so that a
        # reader meets each session's events in the order they were written.
        suffix = ".jsonl.gz" if self._compress else ".jsonl"
        path = directory / f"segment-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}{suffix}"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        # The new file's name is durable too: fsync of the directory that holds it.
        folder = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        self._open[table] = (directory, descriptor)
        return descriptor


@dataclass(frozen=True, slots=True)
class UnreadableLine:
    """A line of a segment that is not an event this gateway reads."""

    path: Path
    line: int
    detail: str


_SEGMENT_PATH = re.compile(
    r"dt=\d{4}-\d{2}-\d{2}/hour=\d{2}/segment-\d{20}-[0-9a-f]{12}\.jsonl(?:\.gz)?"
)


def segments(root: Path, table: str = EVENTS) -> list[Path]:
    """Every segment file of a table (plain or gzipped), oldest first (by hour, then by
    when it was started): only files named and placed as the store writes them."""
    folder = root / table
    return sorted(
        path
        for path in folder.glob("dt=*/hour=*/*")
        if _SEGMENT_PATH.fullmatch(path.relative_to(folder).as_posix())
    )


def strangers(root: Path) -> list[Path]:
    """Files under the tables' folders that are not segments the store wrote (another
    name, another spelling of an hour): no reader reads them, and verify names them."""
    found: list[Path] = []
    for table in TABLES:
        known = set(segments(root, table))
        found += sorted(p for p in (root / table).rglob("*") if p.is_file() and p not in known)
    return found


def segment_lines(path: Path) -> tuple[list[bytes], str | None]:
    """A segment's lines, and what is wrong with its end if it is torn: a line without its
    newline, a gzip member cut short."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data, problem = _gunzipped(data)
    else:
        problem = None
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # the newline that ends the last line
    return lines, problem


def _gunzipped(data: bytes) -> tuple[bytes, str | None]:
    """Every whole gzip member's content (one per batch), and whether one is cut short."""
    pieces: list[bytes] = []
    while data:
        member = zlib.decompressobj(wbits=31)
        try:
            content = member.decompress(data)
        except zlib.error:
            return b"".join(pieces), "a gzip member is damaged"
        if not member.eof:  # a batch not whole on disk: none of it is read
            return b"".join(pieces), "its last gzip member is cut short"
        pieces.append(content)
        data = member.unused_data
    return b"".join(pieces), None


def stored_events(root: Path) -> Iterator[AuditEvent | UnreadableLine]:
    for path in segments(root):
        lines, problem = segment_lines(path)
        for number, line in enumerate(lines, start=1):
            try:
                yield AuditEvent.model_validate_json(line)
            except ValidationError as error:
                detail = f"not an audit event ({error.error_count()} problems)"
                yield UnreadableLine(path, number, detail)
        if problem is not None:
            yield UnreadableLine(path, len(lines) + 1, problem)


def verify_store(root: Path) -> tuple[list[ChainProblem], list[UnreadableLine]]:
    """Each session's chain checked over every segment, and the lines that are not events."""
    sessions: dict[str, list[AuditEvent]] = {}
    unreadable: list[UnreadableLine] = []
    for item in stored_events(root):
        if isinstance(item, UnreadableLine):
            unreadable.append(item)
        else:
            sessions.setdefault(item.session_id, []).append(item)
    problems = [problem for events in sessions.values() for problem in verify_chain(events)]
    unreadable += [
        UnreadableLine(path, 0, "not a segment of this store") for path in strangers(root)
    ]
    return problems, unreadable
