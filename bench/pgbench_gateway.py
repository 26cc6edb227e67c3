"""pgbench -S directly, through Custos, and through PgBouncer, in one run.

Prints transactions per second and mean latency for each path, simple and
extended protocol, 1 and 8 clients, each as a ratio to the direct baseline
measured in the same run. "custos" is the bare transparent mode; "custos+policy"
decides every statement with the demo policy (and a bench role held to the
agent's rules); what the policy costs is also given from the runs of the two
taken back to back. Each figure is the median of --repeat runs, taken in rotation so
that drift in the machine's speed touches every path alike. Usage:

    .venv/bin/python bench/pgbench_gateway.py [--seconds 10] [--scale 10] [--tls]

PgBouncer is included when its binary is on PATH (`apt-get install pgbouncer`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

import yaml  # noqa: E402

from custos.demo.certificates import generate_ca_and_server_cert  # noqa: E402
from custos.demo.postgres import PostgresServer, TemporaryPostgres  # noqa: E402
from custos.identity.dev_issuer import DevIssuer  # noqa: E402

BENCH_ROLES = [{"name": "bench", "trust": [{"issuer": "dev", "subjects": ["bench"]}]}]
UNPRIVILEGED_USER = "custos-pg"


@dataclass(frozen=True)
class Endpoint:
    name: str
    port: int
    environment: dict[str, str]


@dataclass(frozen=True)
class Result:
    tps: float
    latency_ms: float


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {port}")


@contextmanager
def running(command: list[str], port: int, what: str, log: Path) -> Iterator[int]:
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, what)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def bench_policy(work: Path) -> Path:
    """The demo policy, with a `bench` role held to every rule its `agent` role is.

    pgbench's tables (public.pgbench_*) hold no personal data; the role may read them.
    """
    policy = yaml.safe_load((REPOSITORY / "custos" / "demo" / "policy.yaml").read_text())
    policy["roles"] = BENCH_ROLES
    for rule in policy["rules"]:
        roles = rule.get("match", {}).get("roles")
        if roles and "agent" in roles:
            roles.append("bench")
    policy["rules"].append(
        {
            "id": "bench-reads-pgbench",
            "match": {"roles": ["bench"], "kinds": ["select"], "relations": ["public.pgbench_*"]},
            "effect": "allow",
        }
    )
    path = work / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


@contextmanager
def custos_gateway(
    server: PostgresServer,
    work: Path,
    tls: bool,
    policy: bool = False,
    limits: dict[str, object] | None = None,
    audit: dict[str, object] | None = None,
    name: str | None = None,
    log_level: str = "warning",
) -> Iterator[tuple[Endpoint, int]]:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    issuer = DevIssuer.open_or_create(work / "dev-issuer")
    config: dict[str, object] = {
        "listen": f"127.0.0.1:{port}",
        "upstream": {"dsn": server.dsn(database="bench", sslmode="disable")},
        "dev_issuer_dir": str(work / "dev-issuer"),
        "allow_loopback_cleartext": not tls,
        "roles": [] if policy else BENCH_ROLES,
    }
    if policy:
        config["policy"] = {"file": str(bench_policy(work))}
    if limits:
        config["limits"] = limits
    if audit:
        config["audit"] = audit
    environment = {"PGUSER": "bench", "PGPASSWORD": issuer.mint("bench", "bench", ttl_seconds=3600)}
    if tls:
        bundle = generate_ca_and_server_cert(work / "tls")
        config["tls"] = {"cert_file": str(bundle.server_cert), "key_file": str(bundle.server_key)}
        environment["PGSSLMODE"] = "require"
    else:
        environment["PGSSLMODE"] = "disable"
    config_path = work / "custos.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "custos", "--log-level", log_level, "serve"]
    command += ["--config", str(config_path)]
    if name is None:
        name = "custos (TLS)" if tls else "custos+policy" if policy else "custos"
    with running(command, port, "custos", work / "custos.log") as pid:
        yield Endpoint(name, port, environment), pid


@contextmanager
def pgbouncer(server: PostgresServer, work: Path) -> Iterator[Endpoint | None]:
    binary = shutil.which("pgbouncer")
    if binary is None:
        yield None
        return
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    (work / "users.txt").write_text(f'"bench" "bench"\n"{server.superuser}" "x"\n')
    upstream = f"host=127.0.0.1 port={server.port} dbname=bench user={server.superuser}"
    (work / "pgbouncer.ini").write_text(
        f"""[databases]
bench = {upstream} password={server.superuser_password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = plain
auth_file = {work / "users.txt"}
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile =
"""
    )
    command = [binary, str(work / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root.
        command = ["runuser", "-u", UNPRIVILEGED_USER, "--", *command]
    environment = {"PGUSER": "bench", "PGPASSWORD": "bench", "PGSSLMODE": "disable"}
    with running(command, port, "pgbouncer", work / "pgbouncer.log"):
        yield Endpoint("pgbouncer", port, environment)


def pgbench(endpoint: Endpoint, mode: str, clients: int, seconds: int) -> Result:
    command = [
        "pgbench", "-S", "-n", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)),
        "-T", str(seconds), "-h", "127.0.0.1", "-p", str(endpoint.port), "bench",
    ]  # fmt: skip
    environment = {**os.environ, **endpoint.environment}
    output = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if output.returncode != 0:
        raise RuntimeError(f"pgbench against {endpoint.name} failed:\n{output.stderr}")
    tps = re.search(r"tps = ([\d.]+)", output.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", output.stdout)
    if tps is None or latency is None:
        raise RuntimeError(f"cannot read pgbench output:\n{output.stdout}")
    return Result(float(tps.group(1)), float(latency.group(1)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each pgbench run")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    parser.add_argument("--tls", action="store_true", help="also measure Custos with TLS")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="custos-bench-") as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        with TemporaryPostgres(tls=False) as server:
            subprocess.run(["psql", server.dsn(), "-qc", "CREATE DATABASE bench"], check=True)
            subprocess.run(
                ["pgbench", "-i", "-q", "-s", str(arguments.scale), server.dsn(database="bench")],
                check=True,
                capture_output=True,
            )
            direct = Endpoint(
                "direct",
                server.port,
                {
                    "PGUSER": server.superuser,
                    "PGPASSWORD": server.superuser_password,
                    "PGSSLMODE": "disable",
                },
            )
            endpoints = [direct]
            with (
                custos_gateway(server, work / "custos", tls=False) as (plain, _),
                custos_gateway(server, work / "policy", tls=False, policy=True) as (governed, _),
                pgbouncer(server, work / "pgbouncer") as bouncer,
            ):
                endpoints += [plain, governed]
                if bouncer is not None:
                    endpoints.append(bouncer)
                if arguments.tls:
                    with custos_gateway(server, work / "custos-tls", tls=True) as (secure, _):
                        return report([*endpoints, secure], arguments.seconds, arguments.repeat)
                return report(endpoints, arguments.seconds, arguments.repeat)


def median(results: list[Result]) -> Result:
    return sorted(results, key=lambda result: result.tps)[len(results) // 2]


def report(endpoints: list[Endpoint], seconds: int, repeat: int) -> int:
    print(f"pgbench -S, median of {repeat} runs of {seconds} s, {os.cpu_count()} cores\n")
    header = f"{'mode':<9}{'clients':>8}  {'path':<14}{'tps':>10}{'ratio':>8}"
    header += f"{'latency ms':>12}{'added µs':>10}"
    print(header)
    print("-" * len(header))
    for mode in ("simple", "extended"):
        for clients in (1, 8):
            runs: dict[str, list[Result]] = {endpoint.name: [] for endpoint in endpoints}
            for _ in range(repeat):
                for endpoint in endpoints:
                    runs[endpoint.name].append(pgbench(endpoint, mode, clients, seconds))
            baseline: Result | None = None
            for endpoint in endpoints:
                result = median(runs[endpoint.name])
                baseline = baseline or result
                added = (result.latency_ms - baseline.latency_ms) * 1000
                print(
                    f"{mode:<9}{clients:>8}  {endpoint.name:<14}{result.tps:>10.0f}"
                    f"{result.tps / baseline.tps:>8.2f}{result.latency_ms:>12.3f}{added:>10.1f}",
                    flush=True,
                )
            if "custos" in runs and "custos+policy" in runs:
                print(policy_cost(runs["custos"], runs["custos+policy"]), flush=True)
    return 0


def policy_cost(bare: list[Result], governed: list[Result]) -> str:
    """What the policy costs in TPS against the bare mode, from runs taken side by side.

    Each rotation runs the two back to back, so their ratio is spared most of the drift
    in the machine's speed that the medians above still carry.
    """
    kept = sorted(policy.tps / plain.tps for plain, policy in zip(bare, governed, strict=True))
    median_kept = kept[len(kept) // 2]
    return (
        f"{'':<19}policy costs {1 - median_kept:.0%} of bare TPS"
        f" (paired runs: {1 - kept[-1]:.0%} to {1 - kept[0]:.0%})"
    )


if __name__ == "__main__":
    sys.exit(main())
