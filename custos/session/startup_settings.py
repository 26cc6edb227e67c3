"""Startup parameters are statements: the settings a StartupMessage makes, as SET statements.

A client sets session settings before its first statement in two ways: a parameter of the
StartupMessage named after the setting (`search_path`, `role`...), and `options`, the
server's command-line switches (`-c name=value`, `--name=value`). The database applies them
as if SET ran first, so policy decides each as that SET, with the same rules, before the
gateway connects upstream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from custos.protocol import sqlstates
from custos.session.refusal import Refusal

# Parameters of the connection itself, not settings; `replication` is refused earlier.
_CONNECTION_PARAMETERS = frozenset({"user", "database", "replication", "options"})


@dataclass(frozen=True, slots=True)
class StartupSetting:
    name: str
    value: str

    def as_statement(self) -> str:
        """The SET that does what this parameter does."""
        return f"SET {quote_identifier(self.name)} TO {quote_literal(self.value)}"


def startup_settings(parameters: Mapping[str, str]) -> list[StartupSetting] | Refusal:
    """Every setting the parameters make, in the order the server applies them (the named
    parameters after `options`); a Refusal for options the gateway cannot read."""
    settings: list[StartupSetting] = []
    options = parameters.get("options")
    if options:
        switches = _split_options(options)
        for word in switches:
            switch = word + next(switches, "") if word in ("-c", "--") else word
            setting = _switch_setting(switch)
            if setting is None:
                return Refusal(
                    sqlstates.FEATURE_NOT_SUPPORTED,
                    f"the startup option {switch[:40]!r} is not supported through the gateway:"
                    " only -c name=value and --name=value settings are",
                    "set the session's settings with -c name=value in options, or with SET",
                )
            settings.append(setting)
    for name, value in parameters.items():
        if name not in _CONNECTION_PARAMETERS and not name.startswith("_pq_."):
            settings.append(StartupSetting(name.lower(), value))
    return settings


def _split_options(options: str) -> Iterator[str]:
    """The switches of `options`, split as PostgreSQL does: on whitespace, where a
    backslash keeps the next character (a space, or a backslash) in the word."""
    word: list[str] = []
    escaped = False
    for character in options:
        if escaped:
            word.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character.isspace():
            if word:
                yield "".join(word)
                word = []
        else:
            word.append(character)
    if word:
        yield "".join(word)


def _switch_setting(switch: str) -> StartupSetting | None:
    """`-cname=value` (`-c name=value` joined) or `--name=value`; None for any other."""
    if switch.startswith("--") or switch.startswith("-c"):
        assignment = switch[2:]
    else:
        return None
    name, equals, value = assignment.partition("=")
    if not equals or not name:
        return None
    # PostgreSQL reads dashes in a long option's name as underscores.
    return StartupSetting(name.replace("-", "_").lower(), value)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A string constant that reads the same under any standard_conforming_strings."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"
