"""Keyed pseudonyms of identifiers, as the data-subject index keeps them.

HMAC-SHA256 under the audit key (not the masking key) of the identifier's type and its
normal form, so that the index can say "this statement read this person's row" without
holding the identifier, and `custos audit subject --email ...` finds the same pseudonym
from an identifier someone gives. Normal forms make the spellings of one identifier
agree: an email in lower case, a phone number's digits, an IBAN without spaces in upper
case, a subject key as the text of its value.

A subject key's pseudonym does not depend on its table: `crm.customers.id = 42` and
`crm.orders.customer_id = 42` are the same customer, as the catalog's `subject:` columns
say. Tables whose subjects are people of different kinds (customers, employees) share
the namespace, so a report on one may list the other's rows with the same key; each row
names its table.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from custos.audit.events import IdentifierType

IDENTIFIER_CATEGORIES = frozenset(
    {IdentifierType.EMAIL, IdentifierType.PHONE, IdentifierType.IBAN, IdentifierType.NATIONAL_ID}
)
"""The catalog's categories the index keeps: those that name one person."""


def normal_form(identifier_type: IdentifierType, value: str) -> str:
    text = value.strip()
    if identifier_type is IdentifierType.EMAIL:
        return text.lower()
    if identifier_type is IdentifierType.PHONE:
        return "".join(character for character in text if character.isdigit())
    if identifier_type in (IdentifierType.IBAN, IdentifierType.NATIONAL_ID):
        return "".join(text.split()).replace("-", "").upper()
    return text


def identifier_pseudonym(key: bytes, identifier_type: IdentifierType, value: str) -> str:
    """The pseudonym of an email, phone, IBAN or national id."""
    message = f"{identifier_type.value}\x00{normal_form(identifier_type, value)}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


_WHOLE_NUMBER = re.compile(r"[+-]?\d+(?:\.0*)?")


def subject_key_text(value: str) -> str:
    """A subject key's normal form: a whole number as the database prints it (`'0241'`,
    `241.0` and ` 241 ` all find customer 241), any other key as it is, trimmed."""
    text = value.strip()
    if _WHOLE_NUMBER.fullmatch(text):
        return str(int(text.split(".")[0]))
    return text


def subject_pseudonym(key: bytes, subject_value: str) -> str:
    """The pseudonym of a data subject by the value of its key: 42 for customer 42."""
    message = f"{IdentifierType.SUBJECT.value}\x00{subject_key_text(subject_value)}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
