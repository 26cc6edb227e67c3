"""Durations written the way people type them: "30s", "15m", "1h", "2d"."""

from __future__ import annotations

import re

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Nine digits is over thirty years even in seconds; more is a typo, not a duration.
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")


def parse_duration(text: str) -> int:
    """Return the number of seconds in ``text``, a whole number followed by s, m, h or d.

    A bare number is refused rather than guessed at: "15" could mean seconds or minutes.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid duration {text[:40]!r}: write a whole number followed by "
            "s, m, h or d, for example 30s, 15m, 1h or 2d"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
