"""How the core reaches the network adapter: through one entry point, never an import.

`custos serve` and `custos demo` run the gateway, whose sockets live in `proxy_task/`. The
core does not import that package; the package registers its runner under the
`custos.gateway` entry point group (pyproject.toml), and this finds it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Protocol

from custos.config import ConfigError, GatewayConfig

ENTRY_POINT_GROUP = "custos.gateway"


class GatewayRunner(Protocol):
    def __call__(
        self, config: GatewayConfig, on_ready: Callable[[int], None] | None = None
    ) -> None:
        """Runs the gateway until SIGTERM or SIGINT; `on_ready` gets the port it listens on."""


def gateway_runner() -> GatewayRunner:
    found = entry_points(group=ENTRY_POINT_GROUP, name="run")
    if not found:
        raise ConfigError(
            "the gateway's network adapter is not installed (no custos.gateway entry point);"
            " install the project with `pip install -e .` or `make demo`"
        )
    runner: GatewayRunner = next(iter(found)).load()
    return runner
