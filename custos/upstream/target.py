"""The concrete database the gateway connects to, with the credential to use."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where and as whom to connect upstream.

    ``host`` is a hostname or IP address, or a Unix-socket directory when it starts with
    "/". ``sslrootcert`` is a CA bundle path; None means the system trust store.
    ``options`` holds extra StartupMessage parameters (such as ``options`` or
    ``application_name``) the configuration asked for.
    """

    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    database: str
    sslmode: str
    sslrootcert: str | None
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen means frozen: a caller's dict must not change the target behind its back.
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def unix_socket_path(self) -> str | None:
        """The socket file libpq would use for this host and port, or None for TCP."""
        if not self.host.startswith("/"):
            return None
        return f"{self.host.rstrip('/')}/.s.PGSQL.{self.port}"
