"""`custos audit`: commands over the audit store (`--dir` for the local one)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from custos.audit.local import segments, verify_store


def add_audit_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Registers `audit` and its subcommands on the main CLI's subparsers."""
    audit = subparsers.add_parser("audit", help="check and read the audit trail")
    commands = audit.add_subparsers(required=True, metavar="SUBCOMMAND")
    verify = commands.add_parser(
        "verify",
        help="check every session's hash chain; name each event changed, removed, reordered"
        " or inserted, and each line that is not an event",
    )
    verify.add_argument("--dir", type=Path, required=True, metavar="DIR", help="the local store")
    verify.set_defaults(command=verify_command)


def verify_command(arguments: argparse.Namespace) -> int:
    root: Path = arguments.dir
    if not root.is_dir():
        print(f"custos audit: no audit store at {root}: give the directory the gateway writes")
        return 2
    problems, unreadable = verify_store(root)
    for line in unreadable:
        print(f"{line.path.relative_to(root)}:{line.line}: {line.detail}")
    for problem in problems:
        print(
            f"session {problem.session_id} event {problem.seq}: {problem.problem}: {problem.detail}"
        )
    if problems or unreadable:
        print(f"custos audit: {len(problems) + len(unreadable)} problems found in {root}")
        return 1
    print(f"every session's chain holds ({len(segments(root))} segment files in {root})")
    return 0
