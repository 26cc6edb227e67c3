"""A real driver's own test suite directly, through the bare gateway, and through a governed one.

The fidelity check behind "with a policy that allows every statement, a real driver's own
test suite passes through the governed session exactly as through the bare relay". It runs
a driver's test suite, unchanged, three ways, each against a throwaway PostgreSQL cluster of
its own:

- `direct`: straight to PostgreSQL, as the superuser;
- `bare`: through `custos serve` without a policy (the transparent relay);
- `governed`: through `custos serve` with a policy that allows every statement, so every
  statement goes through the governed session machine and its policy stage.

The gateways log in upstream as the superuser, so the suite may create what it likes. The
two gateways differ only in the `policy:` key of their configuration. Through a gateway the
password is a dev-issuer token; TLS is offered and loopback cleartext is allowed too.

Drivers (`--driver`):

- `asyncpg` (default): the suite in the sdist of the asyncpg installed here (`tests/`). It
  finds its server the way asyncpg's test base supports for an existing cluster: PGHOST set
  makes it use a `RunningCluster` built from the PG* variables (tests that must manage a
  cluster of their own then skip). The gateway role is `tester`. asyncpg's default
  `sslmode=prefer` takes the gateway's TLS.
- `pg8000`: the suite in pg8000's sdist (`test/`), run against pg8000 of that version. Its
  fixtures always log in as user `postgres` and take the host, port and password from
  PGHOST, PGPORT and PGPASSWORD, so the gateway role is named `postgres`. It does not use TLS.

Each way's outcomes are read from pytest's JUnit XML. Tests whose outcome differs between the
ways are run again, `--confirm` times each way, to tell a steady difference from a flaky
test; the report lists every test whose outcome differs, with each way's message. Usage:

    .venv/bin/python bench/driver_suite.py [--driver asyncpg|pg8000]
        [--ways direct,bare,governed] [--confirm 2] [--timeout 120] [--keep DIR]
        [-- PYTEST_ARGS...]

Anything after `--` goes to pytest instead of the whole suite (e.g. `-- tests/test_cursor.py
-k scroll`); paths are relative to the directory holding the suite. The run downloads the
driver's sdist and the suite's test dependencies with pip into its work directory, and takes
a few minutes per way. With `--keep DIR` the work directory (JUnit files, pytest output,
gateway and PostgreSQL logs) stays in DIR. Exit status: 0 when bare and governed agree on
every test that behaves the same on every run, 1 when one steadily differs.
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
# The suites connect to PostgreSQL's default database; the gateway serves that one.
DATABASE = "postgres"
TOKEN_TTL_SECONDS = 12 * 3600
OUTCOME_ORDER = {"passed": 0, "skipped": 1, "failed": 2, "error": 3, "missing": 4}
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


@dataclass(frozen=True)
class Driver:
    name: str
    version: str
    tests: str  # the suite's directory in the sdist, and what pytest runs by default
    role: str  # the gateway role: the user name the suite logs in with
    install: tuple[str, ...]  # what the suite needs besides the venv, pip-installed for it
    variables: tuple[str, ...]  # the PG* variables the suite reads


def drivers() -> dict[str, Driver]:
    return {
        # The installed asyncpg is compiled; the suite must test that one, not the sdist's source.
        # test_connect imports distro (asyncpg's test dependency group) at module level.
        "asyncpg": Driver(
            "asyncpg",
            metadata.version("asyncpg"),
            "tests",
            "tester",
            ("distro",),
            ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"),
        ),
        # pg8000 is pure Python and not in the venv: the suite runs against that version.
        "pg8000": Driver(
            "pg8000",
            "1.31.6",
            "test",
            "postgres",
            ("pg8000==1.31.6", "pytz", "pytest-mock", "pytest-benchmark"),
            ("PGHOST", "PGPORT", "PGPASSWORD"),
        ),
    }


def allow_all_policy(role: str) -> dict[str, object]:
    """Every statement of `role` allowed (check one with `custos policy explain`).

    A rule without `kinds` covers every kind, `other` (FETCH, MOVE, LISTEN, ...) included.
    A rule's risks are conditions that must hold, so dynamic code (a DO block, dynamic SQL),
    which the engine denies unless a rule saying `dynamic: true` fires, has its own rule.
    """
    return {
        "rules": [
            {"id": "allow-all", "match": {"roles": [role]}, "effect": "allow"},
            {
                "id": "allow-all-dynamic",
                "match": {"roles": [role], "risks": {"dynamic": True}},
                "effect": "allow",
            },
        ]
    }


@dataclass(frozen=True)
class Outcome:
    status: str  # passed, failed, error, skipped (or missing: the test did not report)
    message: str = ""


@dataclass
class WayResult:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0


# --- the suite ---------------------------------------------------------------------------


def prepare_suite(driver: Driver, work: Path) -> Path:
    """The driver's test directory, unpacked alone from its sdist, and its dependencies."""
    downloads = work / "downloads"
    subprocess.run(
        [*PIP, "download", f"{driver.name}=={driver.version}", "--no-binary", ":all:",
         "--no-deps", "-d", str(downloads)],
        check=True,
    )  # fmt: skip
    sdist = downloads / f"{driver.name}-{driver.version}.tar.gz"
    suite = work / "suite"
    prefix = f"{driver.name}-{driver.version}/"
    with tarfile.open(sdist) as archive:
        members = [
            member
            for member in archive.getmembers()
            if member.name.startswith(f"{prefix}{driver.tests}/")
        ]
        if not members:
            raise RuntimeError(f"{sdist.name} holds no {driver.tests}/ directory")
        for member in members:
            member.name = member.name.removeprefix(prefix)
        archive.extractall(suite, members=members, filter="data")
    subprocess.run(
        [*PIP, "install", "--no-warn-conflicts", "--target", str(work / "deps"), *driver.install],
        check=True,
    )
    print(f"{driver.name} {driver.version}: test suite from {sdist.name}", flush=True)
    return suite


def run_pytest(
    suite: Path, environment: dict[str, str], work: Path, timeout: int, selection: Sequence[str]
) -> None:
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=",
        "--tb=short", "-q", f"--timeout={timeout}", f"--junitxml={work / 'junit.xml'}",
        *selection,
    ]  # fmt: skip
    with (work / "pytest.out").open("wb") as log:
        subprocess.run(
            command, cwd=suite, env=environment, stdout=log, stderr=subprocess.STDOUT, check=False
        )


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
                text = (child.text or "").strip().splitlines()
                message = child.get("message") or (text[-1] if text else "")
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
def gateway(
    server: PostgresServer, work: Path, role: str, policy: bool
) -> Iterator[tuple[int, str]]:
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
        "roles": [{"name": role, "trust": [{"issuer": "dev", "subjects": ["*"]}]}],
        "limits": {"shutdown_grace_seconds": 5},
    }
    if policy:
        policy_path = work / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(allow_all_policy(role), sort_keys=False))
        config["policy"] = {"file": str(policy_path)}
    config_path = work / "custos.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = work / "gateway.log"
    command = [sys.executable, "-m", "custos", "serve", "--config", str(config_path)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        wait_until_listening(process, port, log_path, policy)
        yield port, issuer.mint(role, "driver-suite", ttl_seconds=TOKEN_TTL_SECONDS)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_listening(
    process: subprocess.Popen[bytes], port: int, log_path: Path, policy: bool
) -> None:
    """Waits for the gateway's port and its `listening` log line, which names its policy."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited early; see {log_path}")
        listening = [
            line for line in log_path.read_text().splitlines() if "gateway listening" in line
        ]
        if listening:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            # The comparison is only as good as this: one way governed, the other not.
            if ("policy=none" in listening[0]) == policy:
                raise RuntimeError(f"the gateway's policy is not as configured: {listening[0]}")
            return
        time.sleep(0.05)
    raise RuntimeError(f"the gateway did not start listening; see {log_path}")


@contextmanager
def endpoint(driver: Driver, way: str, work: Path) -> Iterator[dict[str, str]]:
    """A fresh cluster, and the gateway the way needs; yields the suite's PG* variables."""
    bin_dir = find_server_binaries()
    tls = bin_dir is not None and binaries_support_tls(bin_dir)
    cluster = TemporaryPostgres(tls=tls, bin_dir=bin_dir, root_dir=work / "postgres")
    server = cluster.start()
    try:
        if way == "direct":
            variables = {
                "PGHOST": "127.0.0.1",
                "PGPORT": str(server.port),
                "PGUSER": server.superuser,
                "PGPASSWORD": server.superuser_password,
                "PGDATABASE": DATABASE,
            }
            yield {key: variables[key] for key in driver.variables}
        else:
            governed = way == "governed"
            with gateway(server, work / "gateway", driver.role, governed) as (port, token):
                variables = {
                    "PGHOST": "127.0.0.1",
                    "PGPORT": str(port),
                    "PGUSER": driver.role,
                    "PGPASSWORD": token,
                    "PGDATABASE": DATABASE,
                }
                yield {key: variables[key] for key in driver.variables}
    finally:
        # Keep the server's log with the rest of the run's files.
        if cluster.log_file.exists():
            shutil.copy(cluster.log_file, work / "postgres.log")
        cluster.stop()
        shutil.rmtree(work / "postgres", ignore_errors=True)


def run_way(
    driver: Driver,
    way: str,
    suite: Path,
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
    with endpoint(driver, way, work) as variables:
        environment = {**base, **variables, "PYTHONPATH": str(suite.parent / "deps")}
        run_pytest(suite, environment, work, timeout, selection or [driver.tests])
    return WayResult(read_junit(work / "junit.xml"), time.monotonic() - began)


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
    known = drivers()
    parser.add_argument("--driver", choices=sorted(known), default="asyncpg")
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
    driver = known[arguments.driver]

    scratch = None
    if arguments.keep is not None:
        work = arguments.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        scratch = tempfile.TemporaryDirectory(prefix="custos-driver-suite-")
        work = Path(scratch.name)
    work.chmod(0o755)
    try:
        suite = prepare_suite(driver, work)
        results: dict[str, WayResult] = {}
        for way in ways:
            print(f"running the suite {way} ...", flush=True)
            results[way] = run_way(driver, way, suite, work / way, arguments.timeout, selection)
            print(f"  {summary(results[way])}", flush=True)
        confirmations: dict[str, list[WayResult]] = {}
        names = differing(results, ways) if len(ways) > 1 else []
        if names and arguments.confirm > 0:
            ids = [node_id(name, suite) for name in names]
            print(f"rerunning the {len(ids)} differing tests {arguments.confirm}x each way ...")
            for round_number in range(1, arguments.confirm + 1):
                for way in ways:
                    rerun = work / f"{way}-confirm-{round_number}"
                    result = run_way(driver, way, suite, rerun, arguments.timeout, ids)
                    confirmations.setdefault(way, []).append(result)
        return report(results, confirmations, ways, suite)
    finally:
        if scratch is not None:
            scratch.cleanup()
        else:
            print(f"\nwork directory kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
