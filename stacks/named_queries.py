"""The auditors' named queries: one per file in custos/audit/queries/, read at synth.

A file starts with header comments, ``-- name: ...`` and ``-- description: ...`` (others,
such as ``-- parameters:``, are for people); the whole file is the query. A file without
its name or description, or two files of one name, stop the synth naming the file.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

QUERIES_DIR = Path(__file__).resolve().parent.parent / "custos" / "audit" / "queries"
_HEADER = re.compile(r"--\s*([a-z_]+)\s*:\s*(.*?)\s*$")

# Athena's limits for AWS::Athena::NamedQuery.
MAX_NAME = 128
MAX_DESCRIPTION = 1024
MAX_QUERY = 262_144


class NamedQueryError(ValueError):
    """A query file cannot become a named query; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    query: str
    path: Path


def _headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _HEADER.fullmatch(line.strip())
        if match is None:
            break  # the header ends at the first line that is not a `-- key: value`
        headers.setdefault(match[1], match[2])
    return headers


def read_named_query(path: Path) -> NamedQuery:
    """The named query of one file; NamedQueryError if its header or size is wrong."""
    text = path.read_text(encoding="utf-8")
    headers = _headers(text)
    name = headers.get("name", "")
    description = headers.get("description", "")
    problems = []
    if not name:
        problems.append("no `-- name: <name>` header line")
    elif len(name) > MAX_NAME:
        problems.append(f"a name of {len(name)} characters (Athena allows {MAX_NAME})")
    if not description:
        problems.append("no `-- description: <text>` header line")
    elif len(description) > MAX_DESCRIPTION:
        problems.append(
            f"a description of {len(description)} characters (Athena allows {MAX_DESCRIPTION})"
        )
    if len(text) > MAX_QUERY:
        problems.append(f"{len(text)} characters of query (Athena allows {MAX_QUERY})")
    if problems:
        raise NamedQueryError(
            f"{path}: {'; '.join(problems)}; start the file with `-- name:` and "
            "`-- description:` lines (see refused_statements.sql)"
        )
    return NamedQuery(name=name, description=description, query=text, path=path)


def read_named_queries(folder: Path | None = None) -> list[NamedQuery]:
    """Every ``*.sql`` file of ``folder`` (the queries folder) as a named query, by file name."""
    folder = QUERIES_DIR if folder is None else folder
    queries = [read_named_query(path) for path in sorted(folder.glob("*.sql"))]
    if not queries:
        raise NamedQueryError(f"{folder} holds no .sql file; the auditors' queries live there")
    by_name: dict[str, Path] = {}
    for query in queries:
        if query.name in by_name:
            raise NamedQueryError(
                f"{query.path} and {by_name[query.name]} are both named {query.name!r}; "
                "give each query its own `-- name:`"
            )
        by_name[query.name] = query.path
    return queries
