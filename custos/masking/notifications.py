"""Notification payloads masked for a role that sees personal data masked.

A payload comes from another session's NOTIFY (`pg_notify('orders', email)` in a trigger):
no analysis sees where its text comes from. So a session that LISTENs gets every payload
masked by all of its role's mask rules: where every category they mask is one content
detection finds (emails, phone numbers, IBANs, cards, IP and MAC addresses), those found
are masked in place and the rest of the text stays; where a rule masks anything else (a
name, an address, free text), nothing in the text shows what is one, so the whole
payload is redacted. The channel's name, which the listener chose, stays.
"""

from __future__ import annotations

from custos.masking.detect import DETECTED, mask_found
from custos.masking.values import REDACTED, Masker
from custos.policy.engine import MaskSpec
from custos.policy.masks import STRENGTH
from custos.policy.models import PSEUDONYM_METHODS, MaskMethod
from custos.protocol.errors import ProtocolViolation

_KEYLESS = Masker(None)  # for the methods that need no key


class NotificationMasker:
    """Masks NotificationResponse bodies by a role's mask rules. `masker` None: no masking
    key, so a rule asking for pseudonyms has its payloads redacted."""

    def __init__(self, masks: tuple[MaskSpec, ...], masker: Masker | None) -> None:
        categories = frozenset().union(*(mask.categories for mask in masks))
        strongest = max(masks, key=lambda mask: STRENGTH[mask.method]).method
        self._categories = categories
        # Found values are masked as free text's are: partial keeps what a found value's
        # own form allows (an email's domain).
        self._method = strongest
        self._masker = masker
        # Found values masked in place only where everything masked can be found.
        self._detects = categories <= frozenset(DETECTED) and (
            masker is not None or strongest not in PSEUDONYM_METHODS
        )

    def masked(self, body: bytes) -> bytes:
        """The body with its payload masked; raises ProtocolViolation on a malformed one."""
        channel_end = body.find(b"\x00", 4)
        payload_end = body.find(b"\x00", channel_end + 1) if channel_end >= 0 else -1
        if channel_end < 0 or payload_end != len(body) - 1:
            raise ProtocolViolation("the database sent a malformed NotificationResponse")
        payload = body[channel_end + 1 : payload_end]
        return body[: channel_end + 1] + self._masked_payload(payload) + b"\x00"

    def _masked_payload(self, payload: bytes) -> bytes:
        if not payload or self._method is MaskMethod.NULL:
            return b""
        if not self._detects:
            return REDACTED.encode()
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            return REDACTED.encode()
        masker = self._masker if self._masker is not None else _KEYLESS
        return mask_found(text, self._categories, self._method, masker)[0].encode()
