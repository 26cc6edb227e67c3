"""What the audit trail costs: pgbench -S through the governed gateway, audit on (the
local store, every statement durable before it runs) against audit off, in one run;
audit on both ways of durable: `disk` (fsynced) and `process` (handed to the operating
system: it survives the gateway's crash, not the machine's).

Both gateways decide every statement with the demo-like policy of pgbench_gateway.py;
runs alternate between them, so the ratio of each pair is spared most of the drift in
the machine's speed. Also reports the group commit: commits per second and statements
per commit while audited. Usage:

    .venv/bin/python bench/audit_cost.py [--seconds 10] [--repeat 3]

The issue's target: the audit costs at most 15% of TPS at 8 clients.
"""

from __future__ import annotations

import argparse
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from pgbench_gateway import REPOSITORY, Result, custos_gateway, pgbench

sys.path.insert(0, str(REPOSITORY))

from custos.audit.events import AuditEvent, EventType
from custos.audit.local import stored_events
from custos.demo.postgres import TemporaryPostgres

TARGET_COST = 0.15


def row(mode: str, clients: int, durability: str, pairs: list[tuple[Result, Result]]) -> str:
    """One line of the table: medians, and the median cost of the paired runs."""
    middle = len(pairs) // 2
    cost = sorted(1 - audited.tps / plain.tps for plain, audited in pairs)[middle]
    plain_tps = sorted(plain.tps for plain, _ in pairs)[middle]
    audited_tps = sorted(audited.tps for _, audited in pairs)[middle]
    verdict = ""
    if clients == 8:
        verdict = "  within target" if cost <= TARGET_COST else "  missed"
    return (
        f"{mode:<9}{clients:>8}  {durability:<11}{plain_tps:>10.0f}{audited_tps:>10.0f}"
        f"{cost:>7.0%}  (cost {TARGET_COST:.0%} at most){verdict}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each pgbench run")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    parser.add_argument("--repeat", type=int, default=3, help="paired runs per figure (median)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="custos-bench-audit-") as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        key_file = work / "audit.key"
        key_file.write_text(secrets.token_hex(32))
        audit = {"dir": str(work / "audit"), "key": {"key_file": str(key_file)}}
        with TemporaryPostgres(tls=False) as server:
            subprocess.run(["psql", server.dsn(), "-qc", "CREATE DATABASE bench"], check=True)
            subprocess.run(
                ["pgbench", "-i", "-q", "-s", str(arguments.scale), server.dsn(database="bench")],
                check=True,
                capture_output=True,
            )
            with (
                custos_gateway(server, work / "off", tls=False, policy=True) as (off, _),
                custos_gateway(
                    server,
                    work / "on",
                    tls=False,
                    policy=True,
                    audit=audit,
                    name="audit on",
                    log_level="info",
                ) as (on, _),
                custos_gateway(
                    server,
                    work / "process",
                    tls=False,
                    policy=True,
                    audit={**audit, "dir": str(work / "audit-process"), "durability": "process"},
                    name="audit on (process)",
                ) as (process, _),
            ):
                audited_seconds = 0
                print(f"pgbench -S, {arguments.repeat} paired runs of {arguments.seconds} s\n")
                print(
                    f"{'mode':<9}{'clients':>8}  {'durability':<11}{'audit off':>10}"
                    f"{'audit on':>10}{'cost':>7}"
                )
                for mode in ("simple", "extended"):
                    for clients in (1, 8):
                        pairs: dict[str, list[tuple[Result, Result]]] = {"disk": [], "process": []}
                        for _ in range(arguments.repeat):
                            for durability, endpoint in (("disk", on), ("process", process)):
                                plain = pgbench(off, mode, clients, arguments.seconds)
                                audited = pgbench(endpoint, mode, clients, arguments.seconds)
                                if durability == "disk":
                                    audited_seconds += arguments.seconds
                                pairs[durability].append((plain, audited))
                        for durability, runs in pairs.items():
                            print(row(mode, clients, durability, runs), flush=True)
            log = (work / "on" / "custos.log").read_text()
        closed = re.search(r"audit trail closed: (\d+) records in (\d+) commits", log)
        statements = sum(
            1
            for event in stored_events(work / "audit")
            if isinstance(event, AuditEvent) and event.event_type is EventType.STATEMENT
        )
        if closed is None:
            print("\nthe audited gateway did not report its commits (see its log)")
            return 1
        records, commits = int(closed.group(1)), int(closed.group(2))
        print(
            f"\naudited (disk): {statements} statements recorded, {records} records in {commits}"
            f" commits: {commits / audited_seconds:.0f} commits/s,"
            f" {statements / max(commits, 1):.2f} statements per commit"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
