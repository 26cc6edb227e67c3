"""`custos audit`: commands over the audit store (`--dir` for the local one)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custos.audit.events import IdentifierType
from custos.audit.local import segments, verify_store
from custos.audit.output import json_line, plain, table
from custos.audit.query import QUERY_TIMEOUT_SECONDS, AuditQueryError, run_query
from custos.audit.settings import AuditKeySettings
from custos.audit.subject_report import SubjectReport
from custos.masking.keys import KeyLoadError, secret_key


def add_audit_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Registers `audit` and its subcommands on the main CLI's subparsers."""
    audit = subparsers.add_parser("audit", help="check and read the audit trail")
    commands = audit.add_subparsers(required=True, metavar="SUBCOMMAND")

    verify = commands.add_parser(
        "verify",
        help="check every session's hash chain, and with --public-key the signed hourly"
        " digests; name each event changed, removed, reordered or inserted, each file"
        " changed, missing or unlisted, each hour missing, each line that is not an event",
    )
    _store_argument(verify)
    verify.add_argument(
        "--public-key",
        type=Path,
        metavar="PEM",
        help="the Ed25519 public key the digests are signed for (PEM)",
    )
    verify.set_defaults(command=verify_command)

    query = commands.add_parser(
        "query",
        help="run Athena SQL (tables custos_audit.events, custos_audit.subject_access) over"
        " the local store",
    )
    query.add_argument("sql", metavar="SQL", help="one SELECT, as Athena would run it")
    _store_argument(query)
    query.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="VALUE",
        help="the value of the next ? in the query (repeat, in order)",
    )
    query.add_argument(
        "--timeout",
        type=float,
        default=QUERY_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"stop the query after this long (default {QUERY_TIMEOUT_SECONDS:g})",
    )
    _json_argument(query)
    query.set_defaults(command=query_command)

    subject = commands.add_parser(
        "subject",
        help="a data-subject access report: every access to one person's data, and the"
        " statements that read their tables without saying whom; give every identifier of"
        " the person you know (a statement that read them by id names no email)",
    )
    for option in ("email", "phone", "iban", "national-id"):
        subject.add_argument(f"--{option}", metavar="VALUE", help=f"the person's {option}")
    subject.add_argument(
        "--subject", metavar="TABLE:ID", help="the person's key in a catalogued table"
    )
    _store_argument(subject)
    key = subject.add_mutually_exclusive_group()
    key.add_argument(
        "--key-file", type=Path, metavar="FILE", help="the audit key (default: $CUSTOS_AUDIT_KEY)"
    )
    key.add_argument(
        "--config", type=Path, metavar="FILE", help="take the audit key from the gateway's config"
    )
    subject.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="the policy, whose catalog says which tables hold the identifier's category",
    )
    _json_argument(subject)
    subject.set_defaults(command=subject_command)

    replay = commands.add_parser("replay", help="a session's timeline, event by event")
    replay.add_argument("session_id", metavar="SESSION_ID")
    _store_argument(replay)
    _json_argument(replay)
    replay.set_defaults(command=replay_command)

    export = commands.add_parser(
        "export",
        help="write OCSF Datastore Activity (6005) Parquet in AWS Security Lake's layout for"
        " a custom source",
    )
    export.add_argument("--ocsf", type=Path, required=True, metavar="OUT", help="where to write")
    _store_argument(export)
    export.add_argument(
        "--region", default=os.environ.get("AWS_REGION"), help="default: $AWS_REGION"
    )
    export.add_argument("--account-id", metavar="ACCOUNT", help="the AWS account's id")
    export.add_argument("--source-name", default="custos", metavar="NAME")
    export.set_defaults(command=export_command)


def _store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, metavar="DIR", help="the local store")


def _json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON lines, not a table")


def _fail(message: str) -> int:
    print(f"custos audit: {message}", file=sys.stderr)
    return 2


def verify_command(arguments: argparse.Namespace) -> int:
    root: Path = arguments.dir
    if not root.is_dir():
        print(f"custos audit: no audit store at {root}: give the directory the gateway writes")
        return 2
    public_key = None
    if arguments.public_key is not None:
        try:
            public_key = _digest_public_key(arguments.public_key)
        except ValueError as error:
            return _fail(str(error))
    problems, unreadable = verify_store(root)
    for line in unreadable:
        print(f"{line.path.relative_to(root)}:{line.line}: {line.detail}")
    for problem in problems:
        print(
            f"session {problem.session_id} event {problem.seq}: {problem.problem}: {problem.detail}"
        )
    count = len(problems) + len(unreadable)
    if public_key is not None:
        from custos.audit.digests import verify_digests

        digest_problems = verify_digests(root, public_key)
        for digest_problem in digest_problems:
            print(f"{digest_problem.where}: {digest_problem.problem}")
        count += len(digest_problems)
    if count:
        print(f"custos audit: {count} problems found in {root}")
        return 1
    digests = " and every digest's signature, link and files" if public_key is not None else ""
    print(f"every session's chain holds{digests} ({len(segments(root))} segment files in {root})")
    if public_key is not None:
        from custos.audit.digests import digest_anchor

        anchor = digest_anchor(root)
        if anchor is not None:
            # What a store cut off at its end with its digests still verifies: the newest
            # digest's hash, kept elsewhere, shows it.
            print(f"newest digest {anchor[0]}, SHA-256 {anchor[1]}: compare it with a copy kept")
            print("elsewhere to know no newer hour was removed with its digest")
    return 0


def _digest_public_key(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as error:
        raise ValueError(f"cannot read the public key {path}: {error.strerror}") from None
    except ValueError:
        raise ValueError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key, which the digests are signed for")
    return key


def query_command(arguments: argparse.Namespace) -> int:
    try:
        result = run_query(arguments.dir, arguments.sql, arguments.param, arguments.timeout)
    except AuditQueryError as error:
        return _fail(str(error))
    if arguments.json:
        for record in result.records():
            print(json_line(record))
    else:
        print(table(result.columns, result.rows))
        print(f"({len(result.rows)} rows)")
    return 0


def audit_key(arguments: argparse.Namespace) -> bytes:
    """The audit key: --key-file, the gateway config's audit.key, or $CUSTOS_AUDIT_KEY."""
    if arguments.config is not None:
        from custos.config import load_config

        config = load_config(arguments.config)
        if config.audit is None:
            raise KeyLoadError(f"{arguments.config} has no audit: section, so no audit key")
        settings = config.audit.key
    else:
        settings = AuditKeySettings(key_file=arguments.key_file)
    key = secret_key(settings, "audit")
    if key is None:
        raise KeyLoadError(
            f"no audit key: set ${settings.key_env}, or give --key-file or --config (the"
            " key the gateway's audit.key names; pseudonyms under any other key match nothing)"
        )
    return key


def subject_command(arguments: argparse.Namespace) -> int:
    from custos.audit.subject_report import (
        SubjectIdentifier,
        catalog_tables_of,
        subject_report,
    )
    from custos.policy.source import PolicyError

    try:
        identifiers = [
            SubjectIdentifier(kind, getattr(arguments, kind.value))
            for kind in IdentifierType
            if kind is not IdentifierType.SUBJECT and getattr(arguments, kind.value)
        ]
        if arguments.subject is not None:
            identifiers.append(SubjectIdentifier.subject_key(arguments.subject))
        if not identifiers:
            return _fail(
                "give the person's identifiers: --email, --phone, --iban, --national-id"
                " or --subject TABLE:ID (several together for one report each)"
            )
        key = audit_key(arguments)
        reports = []
        for identifier in identifiers:
            tables = None
            if arguments.policy is not None and identifier.relation is None:
                tables = catalog_tables_of(arguments.policy, identifier.identifier_type)
            reports.append(subject_report(arguments.dir, key, identifier, tables))
    except (AuditQueryError, KeyLoadError, PolicyError) as error:
        return _fail(str(error))
    for number, report in enumerate(reports):
        if arguments.json:  # one document per identifier, one per line
            print(json.dumps(plain(_report_document(report)), ensure_ascii=False))
        else:
            if number:
                print()
            _print_report(report)
    return 0


def _report_document(report: SubjectReport) -> dict[str, Any]:
    identifier = report.identifier
    return {
        "identifier_type": identifier.identifier_type.value,
        "identifier": identifier.described(),
        "pseudonym": report.pseudonym,
        "accesses": report.accesses,
        "unidentified_tables": report.unidentified_tables,
        "unidentified_reads": report.unidentified_reads,
    }


def _print_report(report: SubjectReport) -> None:
    identifier = report.identifier
    print(f"Data-subject access report: {identifier.described()}")
    print(f"(its pseudonym in the data-subject index: {report.pseudonym})\n")
    print(f"Accesses ({len(report.accesses)}):")
    if report.accesses:
        print(_records_table(report.accesses, _ACCESS_COLUMNS))
    which = (
        ", ".join(report.unidentified_tables)
        if report.unidentified_tables is not None
        else f"any table, by statements reading {identifier.identifier_type.value}"
    )
    print(f"\nReads that did not say whom they read ({which}): {len(report.unidentified_reads)}")
    if report.unidentified_reads:
        print(_records_table(report.unidentified_reads, _UNIDENTIFIED_COLUMNS))


_ACCESS_COLUMNS = (
    "time",
    "role",
    "principal",
    "session_id",
    "statement_number",
    "identifier_type",
    "relation",
    "columns",
    "access",
    "masked",
    "decision",
    "deciding_rule",
    "approval_id",
    "statement",
)
_UNIDENTIFIED_COLUMNS = (
    "time",
    "role",
    "principal",
    "session_id",
    "statement_number",
    "relation",
    "categories",
    "deciding_rule",
    "statement",
)


def _records_table(records: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    return table(columns, [[_shown(record, name) for name in columns] for record in records])


def _shown(record: dict[str, Any], column: str) -> Any:
    if column != "masked":
        return record[column]
    if record["access"] != "returned":  # what a statement named was never in its result
        return ""
    return "masked" if record["masked"] else "clear"


def replay_command(arguments: argparse.Namespace) -> int:
    from custos.audit.replay import describe, session_timeline

    try:
        timeline = session_timeline(arguments.dir, arguments.session_id)
    except AuditQueryError as error:
        return _fail(str(error))
    if arguments.json:
        for entry in timeline:
            print(json_line(entry))
        return 0
    print(f"session {arguments.session_id}: {len(timeline)} events")
    for entry in timeline:
        print(describe(entry))
    return 0


def export_command(arguments: argparse.Namespace) -> int:
    from custos.audit.ocsf import SecurityLakeSource, export_ocsf

    if not arguments.region or not arguments.account_id:
        return _fail(
            "Security Lake's layout names the region and the account: give --region (or set"
            " $AWS_REGION) and --account-id"
        )
    source = SecurityLakeSource(arguments.source_name, arguments.region, arguments.account_id)
    try:
        written = export_ocsf(arguments.dir, arguments.ocsf, source)
    except AuditQueryError as error:
        return _fail(str(error))
    for path in written:
        print(path)
    print(f"{len(written)} Parquet files of OCSF Datastore Activity under {arguments.ocsf}")
    return 0
