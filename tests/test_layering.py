"""The core never reaches into the network adapter: custos/ does not import proxy_task/."""

from __future__ import annotations

import ast
from pathlib import Path

from custos.gateway import gateway_runner
from proxy_task.app import run

CORE = Path(__file__).resolve().parent.parent / "custos"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_no_module_of_the_core_imports_the_network_adapter():
    offenders = {
        str(path.relative_to(CORE.parent))
        for path in CORE.rglob("*.py")
        if any(module.split(".")[0] == "proxy_task" for module in imported_modules(path))
    }
    assert offenders == set()


def test_the_core_finds_the_adapter_through_its_entry_point():
    assert gateway_runner() is run
