"""A throwaway PostgreSQL cluster for `custos demo` and the test suite.

The cluster lives in one directory (data, socket, TLS files, log) and is gone after `stop()`.
It uses the system's PostgreSQL binaries, or those shipped in the `pgserver` wheel when the
system has none; either way this module drives initdb and pg_ctl itself, so both behave alike.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import types
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from custos.demo.certificates import generate_ca_and_server_cert

SERVER_USER = "custos-pg"
SUPERUSER = "postgres"
DEMO_DATABASE = "custos_demo"
START_TIMEOUT_SECONDS = 30
_LOG_TAIL_LINES = 20
_RELOAD_LOG_LINE = "received SIGHUP, reloading configuration files"
_AUTO_PORT_ATTEMPTS = 3

_INSTALL_HINT = (
    "Install PostgreSQL with `apt-get install postgresql` (or your system's package manager), "
    "or install the bundled binaries with `pip install pgserver`."
)


class PostgresNotFoundError(RuntimeError):
    """No usable PostgreSQL server binaries on this machine."""


class PostgresStartError(RuntimeError):
    """The throwaway cluster could not be created or started."""


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    """What a caller needs to reach a running server."""

    host: str
    port: int
    superuser: str
    superuser_password: str
    database: str
    socket_dir: str | None
    ca_cert: Path | None

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        **params: str,
    ) -> str:
        """A libpq URI. Without `user` it logs in as the superuser with the superuser's password;
        with `user` it carries only the `password` given (none if None)."""
        if user is None:
            user = self.superuser
            password = self.superuser_password if password is None else password
        credentials = quote(user, safe="")
        if password:
            credentials += ":" + quote(password, safe="")
        # libpq takes a bracketed IPv6 literal or a percent-encoded socket directory as host.
        host = f"[{self.host}]" if ":" in self.host else quote(self.host, safe="")
        uri = (
            f"postgresql://{credentials}@{host}:{self.port}/"
            f"{quote(database or self.database, safe='')}"
        )
        if params:
            uri += "?" + "&".join(
                f"{quote(key, safe='')}={quote(value, safe='')}" for key, value in params.items()
            )
        return uri


def server_from_dsn(dsn: str) -> PostgresServer:
    """Describe an existing server from a libpq DSN or URI (e.g. `CUSTOS_TEST_PG_DSN`)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ValueError(
            "The PostgreSQL DSN could not be parsed; give a libpq URI such as "
            "postgresql://user:password@127.0.0.1:5432/postgres."
        ) from exc
    host = str(parts.get("host") or "127.0.0.1").split(",")[0]
    port = str(parts.get("port") or "5432").split(",")[0]
    if not port.isdigit():
        raise ValueError("The PostgreSQL DSN has a port that is not a number.")
    root_cert = parts.get("sslrootcert")
    return PostgresServer(
        host=host,
        port=int(port),
        superuser=str(parts.get("user") or SUPERUSER),
        superuser_password=str(parts.get("password") or ""),
        database=str(parts.get("dbname") or "postgres"),
        socket_dir=host if host.startswith("/") else None,
        ca_cert=Path(str(root_cert)) if root_cert and root_cert != "system" else None,
    )


def find_server_binaries() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: the system's first, then pgserver's."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=10
        )
        bindir = Path(result.stdout.strip())
        if result.returncode == 0 and _has_server_binaries(bindir):
            return bindir
    debian_root = Path("/usr/lib/postgresql")
    if debian_root.is_dir():
        versions = sorted(
            (entry for entry in debian_root.iterdir() if entry.name.isdigit()),
            key=lambda entry: int(entry.name),
            reverse=True,
        )
        for version in versions:
            if _has_server_binaries(version / "bin"):
                return version / "bin"
    return pgserver_binaries()


def pgserver_binaries() -> Path | None:
    """The binaries inside the `pgserver` wheel, if it is installed."""
    # find_spec locates the package without importing it: importing pgserver has side effects.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if _has_server_binaries(bindir) else None


def binaries_support_tls(bin_dir: Path) -> bool:
    """Whether the server in `bin_dir` was built with OpenSSL (pgserver's is not)."""
    pg_config = bin_dir / "pg_config"
    if not pg_config.is_file():
        # Unknown: let the server try; without OpenSSL it refuses `ssl = on` in its log.
        return True
    result = subprocess.run(
        [str(pg_config), "--configure"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    return "--with-openssl" in result.stdout or "--with-ssl=openssl" in result.stdout


def _has_server_binaries(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


class TemporaryPostgres:
    """A throwaway cluster: `with TemporaryPostgres() as server:` or `start()` / `stop()`."""

    def __init__(
        self,
        *,
        port: int | None = None,
        tls: bool = True,
        root_dir: Path | None = None,
        log: Callable[[str], None] | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        self._requested_port = port
        self._tls = tls
        self._given_root = root_dir
        self._log = log or (lambda _message: None)
        self._requested_bin_dir = bin_dir
        self._bin_dir: Path | None = None
        self._extra_hba: list[str] = []
        self._root: Path | None = None
        self._server: PostgresServer | None = None
        self._run_as: list[str] = []
        self._owner: tuple[int, int] | None = None

    @property
    def server(self) -> PostgresServer:
        if self._server is None:
            raise RuntimeError("The temporary PostgreSQL is not running; call start() first.")
        return self._server

    @property
    def data_dir(self) -> Path:
        return self._root_dir / "data"

    @property
    def log_file(self) -> Path:
        return self._root_dir / "postgres.log"

    @property
    def _root_dir(self) -> Path:
        if self._root is None:
            raise RuntimeError("The temporary PostgreSQL has no directory yet; call start().")
        return self._root

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> PostgresServer:
        if self._server is not None:
            raise RuntimeError("This temporary PostgreSQL is already running.")
        bin_dir = self._requested_bin_dir or find_server_binaries()
        if bin_dir is None or not _has_server_binaries(bin_dir):
            where = f" in {bin_dir}" if bin_dir is not None else ""
            raise PostgresNotFoundError(
                f"No PostgreSQL server binaries (initdb, pg_ctl, postgres) found{where}. "
                + _INSTALL_HINT
            )
        if self._tls and not binaries_support_tls(bin_dir):
            raise PostgresStartError(
                f"The PostgreSQL binaries in {bin_dir} were built without TLS support. "
                "Install the system package (`apt-get install postgresql`) for TLS, "
                "or start with tls=False."
            )
        self._bin_dir = bin_dir
        began = time.monotonic()
        try:
            self._prepare_root()
            self._prepare_server_user()
            password = secrets.token_urlsafe(24)
            ca_cert = self._create_cluster(bin_dir, password)
            port = self._start_listening(bin_dir)
        except BaseException:
            self.stop()
            raise
        self._server = PostgresServer(
            host="127.0.0.1",
            port=port,
            superuser=SUPERUSER,
            superuser_password=password,
            database="postgres",
            socket_dir=str(self._root_dir / "socket"),
            ca_cert=ca_cert,
        )
        self._log(
            f"PostgreSQL from {bin_dir} is ready on 127.0.0.1:{port} "
            f"({time.monotonic() - began:.2f} s)"
        )
        return self._server

    def stop(self) -> None:
        """Stop the server, then remove its directory unless the caller supplied it."""
        self._server = None
        root = self._root
        if root is None:
            return
        if (root / "data" / "postmaster.pid").exists():
            self._stop_server(root)
        if self._given_root is None:
            shutil.rmtree(root, ignore_errors=True)
        self._root = None

    def add_hba_rule(self, line: str) -> None:
        """Add a pg_hba.conf line ahead of the default rules (first match wins).

        Before start() it is written with the cluster; on a running server it takes effect at
        once, through reload().
        """
        if "\n" in line or "\r" in line:
            raise ValueError("Give one pg_hba.conf rule per call, without line breaks.")
        self._extra_hba.append(line.strip())
        if self._server is not None:
            self._write_hba()
            self.reload()

    def reload(self) -> None:
        """Make the running server re-read its configuration, and wait until it has."""
        bin_dir = self._bin_dir
        if self._server is None or bin_dir is None:
            raise RuntimeError("The temporary PostgreSQL is not running; call start() first.")
        seen = self._count_in_log(_RELOAD_LOG_LINE)
        self._run(bin_dir, "pg_ctl", ["reload", "-D", str(self.data_dir)], "pg_ctl reload")
        # pg_ctl only sends SIGHUP; the postmaster logs this line while it reloads, and handles
        # no new connection before it is done, so connections after this point see the change.
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while self._count_in_log(_RELOAD_LOG_LINE) <= seen:
            if time.monotonic() > deadline:
                raise PostgresStartError(
                    "PostgreSQL did not confirm the configuration reload within "
                    f"{START_TIMEOUT_SECONDS} s. Server log:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _prepare_root(self) -> None:
        if self._given_root is None:
            self._root = Path(tempfile.mkdtemp(prefix="custos-pg-"))
            # mkdtemp makes the directory 0700; a server user other than us must enter it.
            self._root.chmod(0o755)
        else:
            self._given_root.mkdir(parents=True, exist_ok=True)
            self._root = self._given_root.resolve()
            leftovers = [name for name in ("data", "socket", "tls") if (self._root / name).exists()]
            if leftovers:
                raise PostgresStartError(
                    f"{self._root} already holds a cluster ({', '.join(leftovers)}). "
                    "Give an empty directory, or remove those entries."
                )

    def _prepare_server_user(self) -> None:
        if os.geteuid() != 0:
            self._run_as = []
            self._owner = None
            return
        # PostgreSQL refuses to run as root, so the cluster belongs to a dedicated system user.
        entry = _ensure_system_user(SERVER_USER)
        self._owner = (entry.pw_uid, entry.pw_gid)
        self._run_as = _drop_privileges_prefix(entry)
        unreachable = _first_untraversable(self._root_dir)
        if unreachable is not None:
            raise PostgresStartError(
                f"The server user {SERVER_USER} cannot enter {unreachable}, which holds "
                f"{self._root_dir}. Allow others to enter it (`chmod o+x {unreachable}`), "
                "or leave root_dir unset to use a fresh temporary directory."
            )

    def _create_cluster(self, bin_dir: Path, password: str) -> Path | None:
        root = self._root_dir
        for name in ("data", "socket"):
            (root / name).mkdir(mode=0o700)
            self._give_to_server_user(root / name)
        self.log_file.touch(mode=0o600)
        self._give_to_server_user(self.log_file)
        password_file = root / "superuser-password"
        password_file.touch(mode=0o600)
        self._give_to_server_user(password_file)
        password_file.write_text(password + "\n")
        try:
            self._run(
                bin_dir,
                "initdb",
                [
                    "-D",
                    str(self.data_dir),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-U",
                    SUPERUSER,
                    f"--pwfile={password_file}",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                "initdb",
            )
        finally:
            password_file.unlink()

        settings: dict[str, str | int] = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(root / "socket"),
            # Only the server's own user (and root) may use the socket, where auth is trust.
            "unix_socket_permissions": "0700",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": 200,
            "shared_buffers": "128MB",
            "password_encryption": "scram-sha-256",
        }
        ca_cert: Path | None = None
        if self._tls:
            bundle = generate_ca_and_server_cert(root / "tls")
            self._give_to_server_user(bundle.server_key.parent)
            self._give_to_server_user(bundle.server_key)
            settings |= {
                "ssl": "on",
                "ssl_cert_file": str(bundle.server_cert),
                "ssl_key_file": str(bundle.server_key),
            }
            ca_cert = bundle.ca_cert
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Throwaway cluster settings from custos.demo.postgres\n")
            conf.writelines(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
            conf.write("include 'custos-port.conf'\n")
        self._write_hba()
        return ca_cert

    def _start_listening(self, bin_dir: Path) -> int:
        attempts = 1 if self._requested_port is not None else _AUTO_PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port()
            port_conf = self.data_dir / "custos-port.conf"
            port_conf.write_text(f"port = {port}\n")
            self._give_to_server_user(port_conf)
            result = self._run(
                bin_dir,
                "pg_ctl",
                [
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_SECONDS),
                ],
                "pg_ctl start",
                check=False,
            )
            if result.returncode == 0:
                return port
            tail = self._log_tail()
            if "Address already in use" not in tail:
                raise PostgresStartError(
                    f"PostgreSQL did not start within {START_TIMEOUT_SECONDS} s "
                    f"(pg_ctl: {result.stderr.strip() or result.stdout.strip()}). "
                    f"Server log:\n{tail}"
                )
            if attempt == attempts:
                hint = (
                    "Choose another port, or leave port unset to get a free one."
                    if self._requested_port is not None
                    else "Free ports kept being taken; try again."
                )
                raise PostgresStartError(
                    f"PostgreSQL could not listen on 127.0.0.1:{port}: the port is already in "
                    f"use. {hint}"
                )
            self._log(f"Port {port} was taken before PostgreSQL could bind it; trying another")
        raise AssertionError("unreachable: the loop returns or raises")

    def _stop_server(self, root: Path) -> None:
        bin_dir = self._bin_dir
        if bin_dir is None:
            return
        data = str(root / "data")
        for mode in ("fast", "immediate"):
            result = self._run(
                bin_dir,
                "pg_ctl",
                ["stop", "-D", data, "-m", mode, "-w", "-t", str(START_TIMEOUT_SECONDS)],
                "pg_ctl stop",
                check=False,
            )
            if result.returncode == 0 or not (root / "data" / "postmaster.pid").exists():
                return

    def _write_hba(self) -> None:
        rules = [
            "# Written by custos.demo.postgres; the first matching line wins.",
            *self._extra_hba,
            "local all all trust",
            "host all all 127.0.0.1/32 scram-sha-256",
        ]
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("\n".join(rules) + "\n")
        self._give_to_server_user(hba)

    def _give_to_server_user(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, *self._owner)

    def _run(
        self,
        bin_dir: Path,
        program: str,
        args: list[str],
        what: str,
        *,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        command = [*self._run_as, str(bin_dir / program), *args]
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=False,
                # The server user may not enter the caller's working directory.
                cwd=self._root or "/",
                env=_server_environment(),
                timeout=START_TIMEOUT_SECONDS + 15,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresStartError(
                f"{what} did not finish within {exc.timeout:.0f} s. Server log:\n"
                + self._log_tail()
            ) from None
        if check and result.returncode != 0:
            raise PostgresStartError(
                f"{what} failed with exit status {result.returncode}:\n"
                f"{_tail(result.stderr or result.stdout)}"
            )
        return result

    def _log_tail(self) -> str:
        if self._root is None or not self.log_file.exists():
            return "(no server log)"
        return _tail(self.log_file.read_text(errors="replace"))

    def _count_in_log(self, text: str) -> int:
        return self.log_file.read_text(errors="replace").count(text)


def create_demo_database(server: PostgresServer, name: str = DEMO_DATABASE) -> None:
    """Create database `name` with the demo schema and data; a no-op when it is already loaded."""
    with psycopg.connect(server.dsn(database="postgres"), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
    with psycopg.connect(server.dsn(database=name)) as conn:
        loaded = conn.execute("SELECT to_regclass('crm.customers')").fetchone()
        if loaded is not None and loaded[0] is not None:
            return
        script = resources.files("custos.demo").joinpath("schema.sql").read_text()
        # One transaction: a failed load leaves no half-made schema behind to confuse a rerun.
        conn.execute(script.encode())  # bytes: the script is SQL text, not a query template


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    try:
        # Another process may have created the user between the lookup and useradd.
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresStartError(
            f"Could not create the system user {name} that runs PostgreSQL "
            f"(useradd: {result.stderr.strip()}). Create it yourself, or run as a non-root user."
        ) from None


def _drop_privileges_prefix(entry: pwd.struct_passwd) -> list[str]:
    if shutil.which("setpriv") is not None:
        return [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--clear-groups",
            "--",
        ]
    if shutil.which("runuser") is not None:
        return ["runuser", "-u", entry.pw_name, "--"]
    raise PostgresStartError(
        "Running as root, but neither setpriv nor runuser is available to start PostgreSQL as "
        f"{entry.pw_name}. Install util-linux, or run as a non-root user."
    )


def _first_untraversable(path: Path) -> Path | None:
    for candidate in (*reversed(path.parents), path):
        if not candidate.stat().st_mode & stat.S_IXOTH:
            return candidate
    return None


def _server_environment() -> dict[str, str]:
    # PG* variables of the caller (PGDATA, PGPORT, PGHOST...) must not steer the throwaway cluster.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty)"
