"""Turns a libpq connection string (URI or key=value) into an UpstreamTarget.

libpq's own parser does the reading, so quoting, percent-encoding and URI forms behave
exactly as in psql. Error messages never quote the DSN or any value from it: a broken
string can put pieces of the password anywhere.
"""

from psycopg import Error as PsycopgError
from psycopg.conninfo import conninfo_to_dict

from custos.upstream.errors import UpstreamConfigurationError
from custos.upstream.settings import SSL_MODES
from custos.upstream.target import UpstreamTarget

_DEFAULT_PORT = 5432
_DEFAULT_SSLMODE = "prefer"

# Sent upstream in the StartupMessage as they are (application_name is handled apart, since
# libpq falls back to fallback_application_name for it).
_STARTUP_PARAMETERS = ("options", "client_encoding")

# Parameters whose libpq default is what the gateway does anyway; any other value would be
# silently ignored, so it is refused instead.
_ONLY_DEFAULT = {
    "channel_binding": ("prefer",),
    "gssencmode": ("prefer", "disable"),
    "sslnegotiation": ("postgres",),
    "sslsni": ("1",),
    "target_session_attrs": ("any",),
    "load_balance_hosts": ("disable",),
}

_NO_CLIENT_CERTS = "client certificates are not supported yet; use password authentication"
_NO_GSS = "Kerberos/GSSAPI authentication is not supported; use password authentication"
_UNSUPPORTED_HINTS = {
    "connect_timeout": "set upstream.connect_timeout_seconds instead",
    "hostaddr": "not supported yet; put the address in host instead",
    "passfile": "password files are not read; put the password in the DSN or a secret",
    "service": "service files are not read; write the service's parameters into the DSN",
    "sslcert": _NO_CLIENT_CERTS,
    "sslkey": _NO_CLIENT_CERTS,
    "sslpassword": _NO_CLIENT_CERTS,
    "sslcertmode": _NO_CLIENT_CERTS,
    "krbsrvname": _NO_GSS,
    "gsslib": _NO_GSS,
    "gssdelegation": _NO_GSS,
    "replication": "the gateway opens ordinary sessions only; remove it",
}


def target_from_dsn(
    dsn: str, *, sslmode: str | None = None, sslrootcert: str | None = None
) -> UpstreamTarget:
    """Parses ``dsn``; ``sslmode`` and ``sslrootcert``, when given, override the DSN's."""
    try:
        params = conninfo_to_dict(dsn)
    except PsycopgError:
        raise UpstreamConfigurationError(
            "upstream.dsn is not a valid libpq connection string; write it as "
            "postgresql://user:password@host:port/dbname (percent-encode reserved characters "
            "such as @ : / in the password) or as key=value pairs (single-quote values with "
            "spaces). libpq's detail is withheld because the string may hold a password"
        ) from None
    values = {key: str(value) for key, value in params.items()}

    _refuse_unsupported(values)
    host = values.get("host", "")
    port_text = values.get("port", "")
    if "," in host or "," in port_text:
        raise UpstreamConfigurationError(
            "upstream.dsn names several hosts; the gateway connects to exactly one, so keep "
            "a single host (use a cluster or proxy endpoint for failover)"
        )
    if not host:
        raise UpstreamConfigurationError(
            "upstream.dsn names no host; add one (host=... or postgresql://host/...), or a "
            "Unix-socket directory such as /var/run/postgresql"
        )
    if host.startswith("@"):
        raise UpstreamConfigurationError(
            "upstream.dsn names an abstract Unix socket (host starting with @), which is not "
            "supported yet; use a socket directory or a TCP host"
        )
    user = values.get("user", "")
    if not user:
        raise UpstreamConfigurationError(
            "upstream.dsn names no user; add one (user=... or postgresql://user@host/...)"
        )

    chosen_sslmode = sslmode or values.get("sslmode", _DEFAULT_SSLMODE)
    if chosen_sslmode not in SSL_MODES:
        raise UpstreamConfigurationError(
            f"upstream.dsn has an unknown sslmode; use one of {', '.join(SSL_MODES)}"
        )
    chosen_rootcert = sslrootcert or values.get("sslrootcert")
    if chosen_rootcert == "system":
        # libpq's rule: the system store vouches for any name, so only verify-full is safe.
        if chosen_sslmode != "verify-full":
            raise UpstreamConfigurationError(
                "upstream.dsn uses sslrootcert=system, which needs sslmode=verify-full"
            )
        chosen_rootcert = None

    options = {key: values[key] for key in _STARTUP_PARAMETERS if key in values}
    application_name = values.get("application_name") or values.get("fallback_application_name")
    if application_name:
        options["application_name"] = application_name
    return UpstreamTarget(
        host=host,
        port=_port(port_text),
        user=user,
        password=values.get("password") or None,
        database=values.get("dbname", "") or user,
        sslmode=chosen_sslmode,
        sslrootcert=chosen_rootcert,
        options=options,
    )


def _refuse_unsupported(values: dict[str, str]) -> None:
    known = {
        "host",
        "port",
        "user",
        "password",
        "dbname",
        "sslmode",
        "sslrootcert",
        "application_name",
        "fallback_application_name",
        *_STARTUP_PARAMETERS,
    }
    for key in sorted(values):
        if key in known:
            continue
        accepted = _ONLY_DEFAULT.get(key)
        if accepted is not None:
            if values[key] in accepted:
                continue
            raise UpstreamConfigurationError(
                f"upstream.dsn parameter {key} accepts only {' or '.join(accepted)} for now; "
                "remove it or set it to that"
            )
        hint = _UNSUPPORTED_HINTS.get(key, "the gateway does not support it yet; remove it")
        raise UpstreamConfigurationError(f"upstream.dsn parameter {key} cannot be used: {hint}")


def _port(text: str) -> int:
    if not text:
        return _DEFAULT_PORT
    if text.isascii() and text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    raise UpstreamConfigurationError("upstream.dsn has a port that is not a number from 1 to 65535")
