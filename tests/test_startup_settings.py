"""Startup parameters read as the SET statements they amount to."""

from __future__ import annotations

import pytest

from custos.session.refusal import Refusal
from custos.session.startup_settings import StartupSetting, startup_settings
from custos.sql.analysis import analyze
from custos.sql.facts import StatementKind


def test_options_switches_and_named_parameters_are_settings_in_order() -> None:
    parameters = {
        "user": "agent",
        "database": "crm",
        "options": "-c role=x  -cstatement_timeout=5s --search-path=a\\ b -c\tdatestyle=ISO",
        "application_name": "psql",
        "_pq_.extension": "on",
    }
    assert startup_settings(parameters) == [
        StartupSetting("role", "x"),
        StartupSetting("statement_timeout", "5s"),
        StartupSetting("search_path", "a b"),
        StartupSetting("datestyle", "ISO"),
        StartupSetting("application_name", "psql"),
    ]


@pytest.mark.parametrize("options", ["-B 100", "-c", "-c =x", "--role", "-e", "role=x"])
def test_switches_other_than_settings_are_refused(options: str) -> None:
    refusal = startup_settings({"options": options})
    assert isinstance(refusal, Refusal)
    assert refusal.sqlstate == "0A000"
    assert "not supported through the gateway" in refusal.message


@pytest.mark.parametrize(
    "value", ["crm", "o'brien", "a\\b", "\\'; DROP TABLE t; --", "x' , role = 'postgres"]
)
def test_a_setting_is_one_set_statement_whatever_its_value(value: str) -> None:
    setting = StartupSetting("search_path", value)
    analysis = analyze(setting.as_statement(), ("public",))
    assert analysis.error is None
    (statement,) = analysis.statements
    assert statement.kind is StatementKind.SET
    assert statement.kinds == frozenset({StatementKind.SET})
    assert not statement.sets_role
