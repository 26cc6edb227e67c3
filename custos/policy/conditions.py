"""Risk conditions that need more than a set lookup: patterns, LIMITs, time windows.

Every description returned here names columns, relations and thresholds from the
policy, never a value from the SQL or its parameters: those can be personal data.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from custos.policy.models import TimeWindow
from custos.sql.facts import ParameterRef, PatternMatch

_LIKE = frozenset({"~~", "~~*"})
_REGEX = frozenset({"~", "~*"})
# Characters that make a pattern match more than one fixed prefix (escapes included: which
# escape character applies is not always known, so an escaped character counts as special).
_LIKE_SPECIALS = frozenset("%_\\")
_SIMILAR_SPECIALS = frozenset("%_|*+?{}()[]\\")
_REGEX_SPECIALS = frozenset(".[]()*+?{}|\\^$")
_WILDCARD = "a pattern not anchored to a fixed prefix"
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parameter(params: Sequence[str | None], ref: ParameterRef) -> str | None:
    """The text of bind parameter ``ref``; None when absent, NULL or not in text form."""
    index = ref.index - 1
    return params[index] if 0 <= index < len(params) else None


def pattern_risk(match: PatternMatch, params: Sequence[str | None]) -> str | None:
    """Why ``match`` could select rows wholesale, in words without the pattern; else None.

    Fails closed: a pattern the gateway cannot see (an expression, a parameter without
    a text value, an operator it does not know) counts as a risk.
    """
    if match.negated:
        return "a negated pattern"
    pattern = match.pattern
    if isinstance(pattern, ParameterRef):
        pattern = parameter(params, pattern)
        if pattern is None:
            return "a pattern from a parameter without a text value"
    elif pattern is None:
        return "a pattern computed by an expression"
    operator = match.operator
    if operator in _LIKE:
        return None if _exact_or_prefix(pattern, _LIKE_SPECIALS) else _WILDCARD
    if operator == "similar":
        return None if _exact_or_prefix(pattern, _SIMILAR_SPECIALS) else _WILDCARD
    if operator in _REGEX:
        if not pattern.startswith("^"):
            return "an unanchored regular expression"
        prefix = pattern[1:].removesuffix("$") if pattern.endswith("$") else pattern[1:]
        prefix = prefix.removesuffix(".*")
        return None if _fixed_prefix(prefix, _REGEX_SPECIALS) else _WILDCARD
    if operator == "prefix":
        return None if pattern else _WILDCARD
    if operator == "contains":
        return "a search inside the values (strpos, position)"
    return "a pattern operator the gateway does not know"


def _exact_or_prefix(pattern: str, specials: frozenset[str]) -> bool:
    """A LIKE or SIMILAR TO pattern that is one value, or a fixed prefix and a final `%`."""
    if not any(character in specials for character in pattern):
        return True
    return _fixed_prefix(pattern.removesuffix("%"), specials)


def _fixed_prefix(prefix: str, specials: frozenset[str]) -> bool:
    """Whether the text is a non-empty run of ordinary characters: a search that can only
    find values starting with it (a trailing wildcard already taken off)."""
    return bool(prefix) and not any(character in specials for character in prefix)


def bounded_limit(limit: int | ParameterRef | None, params: Sequence[str | None]) -> int | None:
    """The LIMIT the statement applies, or None when it has none the gateway can rely on."""
    if isinstance(limit, ParameterRef):
        text = parameter(params, limit)
        if text is None:
            return None
        try:
            return int(text.strip())
        except ValueError:
            return None
    return limit


def describe_missing_limit(limit: int | ParameterRef | None) -> str:
    if isinstance(limit, ParameterRef):
        return f"a LIMIT from parameter ${limit.index} without a usable value"
    return "no LIMIT"


class CompiledTimeWindow:
    """A policy time window, ready to test instants against."""

    __slots__ = ("_days", "_end", "_outside", "_overnight", "_start", "_zone")

    def __init__(self, window: TimeWindow) -> None:
        self._days = frozenset(_DAYS.index(day) for day in window.days)
        self._zone = ZoneInfo(window.timezone)
        self._start = _clock(window.from_)
        # "24:00" ends the day; time.max is the closest a time of day gets to it.
        self._end = time.max if window.to == "24:00" else _clock(window.to)
        self._overnight = self._start > self._end
        self._outside = window.outside

    def matches(self, now: datetime) -> bool:
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        local = now.astimezone(self._zone)
        clock = local.time().replace(tzinfo=None)
        weekday = local.weekday()
        if self._overnight:
            # After midnight, the hours belong to the window that opened the day before.
            inside = (weekday in self._days and clock >= self._start) or (
                (weekday - 1) % 7 in self._days and clock < self._end
            )
        else:
            inside = weekday in self._days and self._start <= clock < self._end
        return inside != self._outside


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))
