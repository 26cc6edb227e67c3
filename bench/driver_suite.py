"""asyncpg's own test suite directly, through the bare gateway, and through a governed one.

The fidelity check behind "with a policy that allows every statement, a real driver's own
test suite passes through the governed session exactly as through the bare relay". It runs
asyncpg's test suite (from the sdist of the asyncpg installed here, which ships `tests/`)
three ways, each against a throwaway PostgreSQL cluster of its own:

- `direct`: straight to PostgreSQL, as the superuser;
- `bare`: through `custos serve` without a policy (the transparent relay);
- `governed`: through `custos serve` with a policy that allows every statement, so every
  statement goes through the governed session machine and its policy stage.

The gateways log in upstream as the superuser, so the suite may create what it likes. The
suite finds its server the way asyncpg's test base supports for an existing cluster: PGHOST
set makes it use a `RunningCluster` built from the PG* environment variables (tests that
must manage a cluster of their own then skip). Nothing in the suite is changed. Through a
gateway the user is the role `tester` and the password a dev-issuer token; TLS is offered
(asyncpg's default `sslmode=prefer` takes it) and loopback cleartext is allowed for the tests
that turn TLS off.

Each way's outcomes are read from pytest's JUnit XML. Tests whose outcome differs between the
ways are run again, `--confirm` times each way, to tell a steady difference from a flaky
test; the report lists every test whose outcome differs, with each way's message. Usage:

    .venv/bin/python bench/driver_suite.py [--ways direct,bare,governed] [--confirm 2]
        [--timeout 120] [--keep DIR] [-- PYTEST_ARGS...]

Anything after `--` goes to pytest (e.g. `-- tests/test_cursor.py -k scroll`); paths are
relative to the directory that holds the suite's `tests/`. The run downloads the asyncpg
sdist and the suite's one extra import (`distro`) with pip into a temporary directory, and
takes some minutes per way. With `--keep DIR` the work directory (JUnit files, pytest output,
gateway and PostgreSQL logs) stays in DIR. Exit status: 0 when bare and governed agree on
every test (after confirmation), 1 when they differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

import yaml  # noqa: E402

from custos.demo.certificates import generate_ca_and_server_cert  # noqa: E402
from custos.demo.postgres import (  # noqa: E402
    PostgresServer,
    TemporaryPostgres,
    binaries_support_tls,
    find_server_binaries,
)
from custos.identity.dev_issuer import DevIssuer  # noqa: E402

WAYS = ("direct", "bare", "governed")
ROLE = "tester"
ROLES = [{"name": ROLE, "trust": [{"issuer": "dev", "subjects": ["*"]}]}]
# Allows every statement to the tester role. A rule's risks are conditions that must hold, so
# dynamic code (a DO block, dynamic SQL) needs its own rule saying `dynamic: true`: the engine
# denies dynamic code unless such a rule fires. A rule without `kinds` covers every kind,
# `other` (FETCH, MOVE, LISTEN, ...) included. Check with `custos policy explain`.
ALLOW_ALL_POLICY = {
    "rules": [
        {"id": "allow-all", "match": {"roles": [ROLE]}, "effect": "allow"},
        {
            "id": "allow-all-dynamic",
            "match": {"roles": [ROLE], "risks": {"dynamic": True}},
            "effect": "allow",
        },
    ]
}
# The suite connects to PostgreSQL's default database; the gateway serves that one.
DATABASE = "postgres"
TOKEN_TTL_SECONDS = 12 * 3600
OUTCOME_ORDER = {"passed": 0, "skipped": 1, "failed": 2, "error": 3, "missing": 4}


@dataclass(frozen=True)
class Outcome:
    status: str  # passed, failed, error, skipped (or missing: the test did not report)
    message: str = ""


@dataclass
class WayResult:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0
    exit_code: int = 0


# --- the suite ---------------------------------------------------------------------------


def prepare_suite(work: Path) -> Path:
    """asyncpg's tests, from the sdist of the installed version, and their extra import.

    Only `tests/` is unpacked, into a directory of its own, so the suite imports the installed
    (compiled) asyncpg rather than the sdist's uncompiled source.
    """
    version = metadata.version("asyncpg")
    downloads = work / "downloads"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "download", f"asyncpg=={version}", "--no-binary", ":all:", "--no-deps",
         "-d", str(downloads)],
        check=True,
    )  # fmt: skip
    sdist = downloads / f"asyncpg-{version}.tar.gz"
    suite = work / "suite"
    prefix = f"asyncpg-{version}/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix + "tests/")]
        if not members:
            raise RuntimeError(f"{sdist.name} holds no tests/ directory")
        for member in members:
            member.name = member.name.removeprefix(prefix)
        archive.extractall(suite, members=members, filter="data")
    # test_connect imports distro (from asyncpg's test dependency group) at module level.
    subprocess.run([*pip, "install", "--target", str(work / "deps"), "distro"], check=True)
    print(f"asyncpg {version}: test suite from {sdist.name}", flush=True)
    return suite


def run_pytest(
    suite: Path,
    environment: dict[str, str],
    junit: Path,
    output: Path,
    timeout: int,
    selection: Sequence[str],
) -> int:
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=",
        "--tb=short", "-q", f"--timeout={timeout}", f"--junitxml={junit}",
        *(selection or ["tests"]),
    ]  # fmt: skip
    with output.open("wb") as log:
        finished = subprocess.run(
            command, cwd=suite, env=environment, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    return finished.returncode


def read_junit(path: Path) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    if not path.exists():
        return outcomes
    # The file is pytest's own, written by this run: not untrusted input.
    for case in ElementTree.parse(path).getroot().iter("testcase"):  # noqa: S314
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = {"failure": "failed"}.get(child.tag, child.tag)
                message = child.get("message") or (child.text or "").strip().splitlines()[-1:][0]
                break
        # A test that fails and then errors in teardown reports twice: keep the worse.
        previous = outcomes.get(name)
        if previous is None or OUTCOME_ORDER[status] > OUTCOME_ORDER[previous.status]:
            outcomes[name] = Outcome(status, " ".join(message.split()))
    return outcomes


def node_id(name: str, suite: Path) -> str:
    """A pytest node id from a JUnit `classname::name` (tests.test_x.Class::test)."""
    classname, _, test = name.partition("::")
    parts = classname.split(".")
    for split in range(len(parts), 0, -1):
        module = Path(*parts[:split]).with_suffix(".py")
        if (suite / module).is_file():
            return "::".join([module.as_posix(), *parts[split:], test])
    return name


# --- the servers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def gateway(server: PostgresServer, work: Path, policy: bool) -> Iterator[tuple[int, str]]:
    """A `custos serve` in front of `server`, logging in upstream as its superuser."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tls = generate_ca_and_server_cert(work / "tls")
    issuer = DevIssuer.open_or_create(work / "dev-issuer")
    config: dict[str, object] = {
        "listen": f"127.0.0.1:{port}",
        "upstream": {"dsn": server.dsn(database=DATABASE, sslmode="disable")},
        "tls": {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key)},
        "dev_issuer_dir": str(work / "dev-issuer"),
        "allow_loopback_cleartext": True,
        "roles": ROLES,
        "limits": {"shutdown_grace_seconds": 5},
    }
    if policy:
        policy_path = work / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(ALLOW_ALL_POLICY, sort_keys=False))
        config["policy"] = {"file": str(policy_path)}
    config_path = work / "custos.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "custos", "serve", "--config", str(config_path)]
    with (work / "gateway.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited early; see {work / 'gateway.log'}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start listening") from None
                time.sleep(0.05)
        yield port, issuer.mint(ROLE, "driver-suite", ttl_seconds=TOKEN_TTL_SECONDS)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def endpoint(way: str, work: Path) -> Iterator[dict[str, str]]:
    """A fresh cluster, and the gateway the way needs; yields the suite's PG* variables."""
    bin_dir = find_server_binaries()
    tls = bin_dir is not None and binaries_support_tls(bin_dir)
    cluster = TemporaryPostgres(tls=tls, bin_dir=bin_dir, root_dir=work / "postgres")
    server = cluster.start()
    try:
        if way == "direct":
            yield {
                "PGHOST": "127.0.0.1",
                "PGPORT": str(server.port),
                "PGUSER": server.superuser,
                "PGPASSWORD": server.superuser_password,
                "PGDATABASE": DATABASE,
            }
        else:
            with gateway(server, work / "gateway", policy=way == "governed") as (port, token):
                yield {
                    "PGHOST": "127.0.0.1",
                    "PGPORT": str(port),
                    "PGUSER": ROLE,
                    "PGPASSWORD": token,
                    "PGDATABASE": DATABASE,
                }
    finally:
        # Keep the server's log with the rest of the run's files.
        if cluster.log_file.exists():
            shutil.copy(cluster.log_file, work / "postgres.log")
        cluster.stop()
        shutil.rmtree(work / "postgres", ignore_errors=True)


def run_way(
    way: str,
    suite: Path,
    deps: Path,
    work: Path,
    timeout: int,
    selection: Sequence[str],
) -> WayResult:
    work.mkdir(parents=True, exist_ok=True)
    # The cluster's directory must be enterable by the server's user when run as root.
    work.chmod(0o755)
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PG") and key not in ("USE_UVLOOP", "PYTHONPATH")
    }
    began = time.monotonic()
    with endpoint(way, work) as variables:
        environment = {**base, **variables, "PYTHONPATH": str(deps)}
        junit = work / "junit.xml"
        code = run_pytest(suite, environment, junit, work / "pytest.out", timeout, selection)
    return WayResult(read_junit(junit), time.monotonic() - began, code)


# --- the report --------------------------------------------------------------------------


def differing(results: dict[str, WayResult], ways: Sequence[str]) -> list[str]:
    names = sorted(set().union(*(results[way].outcomes for way in ways)))
    return [
        name
        for name in names
        if len({results[way].outcomes.get(name, Outcome("missing")).status for way in ways}) > 1
    ]


def summary(result: WayResult) -> str:
    counts: dict[str, int] = {}
    for outcome in result.outcomes.values():
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    parts = ", ".join(f"{counts[s]} {s}" for s in OUTCOME_ORDER if s in counts)
    return f"{len(result.outcomes)} tests: {parts} ({result.seconds:.0f} s)"


def report(
    results: dict[str, WayResult],
    confirmations: dict[str, list[WayResult]],
    ways: Sequence[str],
    suite: Path,
) -> int:
    """Prints each way's totals and every differing test; 1 if bare and governed differ."""
    print("\n== outcomes")
    for way in ways:
        print(f"{way:<9} {summary(results[way])}")
    names = differing(results, ways)
    steady: dict[str, dict[str, str]] = {}  # test -> way -> its one status on every run
    print(f"\n== {len(names)} tests whose outcome differs between {', '.join(ways)}")
    for name in names:
        seen: dict[str, list[Outcome]] = {
            way: [
                run.outcomes.get(name, Outcome("missing"))
                for run in (results[way], *confirmations.get(way, []))
            ]
            for way in ways
        }
        flaky = any(len({o.status for o in outcomes}) > 1 for outcomes in seen.values())
        if not flaky:
            steady[name] = {way: outcomes[0].status for way, outcomes in seen.items()}
        print(f"\n{node_id(name, suite)}  [{'FLAKY' if flaky else 'STEADY'}]")
        for way, outcomes in seen.items():
            line = f"  {way:<9} {'/'.join(o.status for o in outcomes)}"
            failure = next((o for o in outcomes if o.message and o.status != "skipped"), None)
            if failure is not None:
                line += f": {failure.message[:400]}"
            print(line)
    if "bare" not in ways or "governed" not in ways:
        return 0
    pair = differing(results, ("bare", "governed"))
    always = [name for name, statuses in steady.items() if statuses["bare"] != statuses["governed"]]
    print(
        f"\n== bare vs governed: {len(pair)} tests differ in the first run; "
        f"{len(always)} differ on every run"
    )
    for name in always:
        print(f"  {node_id(name, suite)}")
    return 1 if always else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        usage="%(prog)s [options] [-- PYTEST_ARGS...]",
    )
    parser.add_argument("--ways", default=",".join(WAYS), help="which of direct,bare,governed")
    parser.add_argument(
        "--confirm", type=int, default=2, help="reruns of each differing test per way (default 2)"
    )
    parser.add_argument(
        "--timeout", type=int, default=120, help="seconds per test (pytest-timeout)"
    )
    parser.add_argument("--keep", type=Path, help="keep the work directory here")
    arguments, selection = parser.parse_known_args(argv)
    selection = [arg for arg in selection if arg != "--"]
    ways = [way.strip() for way in arguments.ways.split(",") if way.strip()]
    unknown = sorted(set(ways) - set(WAYS))
    if unknown:
        parser.error(f"unknown ways {unknown}; choose from {', '.join(WAYS)}")

    scratch = None
    if arguments.keep is not None:
        work = arguments.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        scratch = tempfile.TemporaryDirectory(prefix="custos-driver-suite-")
        work = Path(scratch.name)
    work.chmod(0o755)
    try:
        suite = prepare_suite(work)
        results: dict[str, WayResult] = {}
        for way in ways:
            print(f"running the suite {way} ...", flush=True)
            results[way] = run_way(
                way, suite, work / "deps", work / way, arguments.timeout, selection
            )
            print(f"  {summary(results[way])}", flush=True)
        confirmations: dict[str, list[WayResult]] = {}
        names = differing(results, ways) if len(ways) > 1 else []
        if names and arguments.confirm > 0:
            ids = [node_id(name, suite) for name in names]
            print(f"rerunning the {len(ids)} differing tests {arguments.confirm}x each way ...")
            for round_number in range(1, arguments.confirm + 1):
                for way in ways:
                    result = run_way(
                        way, suite, work / "deps", work / f"{way}-confirm-{round_number}",
                        arguments.timeout, ids,
                    )  # fmt: skip
                    confirmations.setdefault(way, []).append(result)
        return report(results, confirmations, ways, suite)
    finally:
        if scratch is not None:
            scratch.cleanup()
        else:
            print(f"\nwork directory kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
