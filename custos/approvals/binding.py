"""The binding of an approval to the exact statement it was asked for.

A retry-mode approval lets one principal run one statement once: the same text, the same
parameters, the same role, through the same target. What ties them is a keyed HMAC of all
of them (never a bare hash: the text may hold personal values, and a bare hash of a short
value is easily reversed), so requests can be stored and compared without the text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence


def statement_binding(
    key: bytes,
    *,
    issuer: str,
    subject: str,
    role: str,
    target: str | None,
    text: str,
    parameters: Sequence[str | None],
) -> str:
    canonical = json.dumps(
        [issuer, subject, role, target, text, list(parameters)],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
