"""Compiles the hot path (the session, the masking of results) with mypyc, and the masked-row
fast path with Cython; the rest is in pyproject.toml.

Every statement and every answer passes through the modules below, so they are compiled to
C extension modules (the same code, typed; mypy checks it). A masked row's values are
rewritten in C on its bytes (custos/masking/row_masker.pyx), where the row's columns allow.
Set CUSTOS_PURE_PYTHON=1 to install them as plain Python instead: the gateway behaves the
same, only slower (masked rows take the rewriter's general path).
"""

import os

from setuptools import setup

HOT_PATH = [
    "custos/audit/chain.py",
    "custos/audit/commit.py",
    "custos/audit/stage.py",
    "custos/audit/statements.py",
    "custos/masking/detect.py",
    "custos/masking/rewriter.py",
    "custos/masking/values.py",
    "custos/protocol/backend.py",
    "custos/protocol/framing.py",
    "custos/protocol/frontend.py",
    "custos/session/actions.py",
    "custos/session/answers.py",
    "custos/session/decision.py",
    "custos/session/effects.py",
    "custos/session/ledger.py",
    "custos/session/lexical.py",
    "custos/session/machine.py",
    "custos/session/own_messages.py",
    "custos/session/policy_stage.py",
    "custos/session/reached.py",
    "custos/session/refusal.py",
    "custos/session/resolution.py",
    "custos/session/relay.py",
    "custos/session/stages.py",
    "custos/session/statement.py",
    "custos/session/texts.py",
    "custos/session/view.py",
    "custos/sql/cache.py",
    "custos/sql/shapes.py",
    "proxy_task/session.py",
]


def _extensions() -> list[object]:
    if os.environ.get("CUSTOS_PURE_PYTHON"):
        return []
    from Cython.Build import cythonize
    from mypyc.build import mypycify
    from setuptools import Extension

    masked_rows = Extension(
        "custos.masking.row_masker", ["custos/masking/row_masker.pyx"], extra_compile_args=["-O3"]
    )
    return [
        *mypycify(HOT_PATH, opt_level="3", group_name="custos_hot_path"),
        *cythonize([masked_rows], language_level=3, quiet=True),
    ]


setup(ext_modules=_extensions())
