"""A policy's version: a digest of its meaning, not of its formatting."""

from __future__ import annotations

import hashlib
import json

from custos.policy.models import PolicyDocument


def policy_version(document: PolicyDocument) -> str:
    """SHA-256 (hex) of the validated document in canonical JSON.

    Comments, key order, quoting and indentation do not change it; any change to
    what the policy says does, so every decision can name the exact policy it used.
    """
    meaning = document.model_dump(mode="json")
    if not meaning["detect"]:
        # A policy with no detect patterns says what it said before they existed.
        del meaning["detect"]
    canonical = json.dumps(meaning, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
