"""Patterns a policy adds to content detection: its own kinds of personal values, found in
free text by a regular expression (`detect: {custom:employee_id: {pattern: ...}}`).

A pattern runs over every free-text value a masked statement returns, so it is checked
when the policy loads: it must compile, stay short, match at least one character (an
empty match would be found at every position of every text), and hold no repeat within a
repeat nor alternatives within a repeat. Python's `re` has no time limit, and those two
constructs are what makes a pattern backtrack exponentially on text that almost matches
(`(a+)+$`, `(\\d|\\d\\d)+$`). Adjacent repeats that can take the same characters
(`\\d+\\d+x`) still cost polynomial time on long text; keep patterns literal where they
can be: `EMP-[0-9]{6}`.
"""

from __future__ import annotations

import re
import re._parser as sre_parse  # the parser `re` itself uses: the widths and repeats
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_PATTERN_CHARS = 300
"""The longest pattern a policy may give, in characters."""

_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})


@dataclass(frozen=True, slots=True)
class PolicyPattern:
    """A category of personal data the policy finds in free text by a regular expression."""

    category: str
    pattern: str

    def as_dict(self) -> dict[str, object]:
        return {"category": self.category, "pattern": self.pattern}


def checked_pattern(text: str) -> re.Pattern[str]:
    """The pattern compiled; ValueError, saying what to change, for one that is too long,
    does not compile, can match nothing at all, or can backtrack exponentially."""
    if not text:
        raise ValueError("a detect pattern is empty: give the regular expression to find")
    if len(text) > MAX_PATTERN_CHARS:
        raise ValueError(
            f"a detect pattern is {len(text)} characters long, more than the "
            f"{MAX_PATTERN_CHARS} allowed: write the shape of the value, e.g. EMP-[0-9]{{6}}"
        )
    try:
        compiled = re.compile(text)
        parsed: Any = sre_parse.parse(text)
    except re.error as error:
        raise ValueError(f"detect pattern {text!r} is not a regular expression: {error}") from None
    if parsed.getwidth()[0] == 0:
        raise ValueError(
            f"detect pattern {text!r} can match the empty string, and would be found at every "
            "position of every text: make at least one character required, e.g. "
            "EMP-[0-9]{6} rather than (EMP-)?[0-9]*"
        )
    risk = _backtracking_risk(parsed, repeated=False)
    if risk is not None:
        raise ValueError(
            f"detect pattern {text!r} has {risk}, which can make matching take exponential "
            "time on text that almost matches; spell the repetition out, e.g. "
            "[A-Z]{2}-[0-9]{4}(-[0-9]{4})? rather than ([A-Z0-9]+-?)+"
        )
    return compiled


def _backtracking_risk(items: Iterable[Any], repeated: bool) -> str | None:
    """What in the parsed pattern can backtrack exponentially: a repeat of varying length or
    alternatives inside a repeated part (None: neither)."""
    for op, argument in items:
        name = str(op)
        found: str | None = None
        if name in _REPEATS:
            least, most, body = argument
            if repeated and least != most:
                return "a repeat within a repeat"
            found = _backtracking_risk(body, repeated or most > 1)
        elif name == "BRANCH":
            if repeated:
                return "alternatives (|) within a repeat"
            for branch in argument[1]:
                found = found or _backtracking_risk(branch, repeated)
        elif name == "SUBPATTERN":
            found = _backtracking_risk(argument[3], repeated)
        elif name in ("ASSERT", "ASSERT_NOT"):
            found = _backtracking_risk(argument[1], repeated)
        elif name == "ATOMIC_GROUP":
            found = _backtracking_risk(argument, repeated)
        elif name == "GROUPREF_EXISTS":
            for branch in argument[1:]:
                if branch is not None:
                    found = found or _backtracking_risk(branch, repeated)
        if found is not None:
            return found
    return None
