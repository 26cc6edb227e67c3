"""Masked values that keep their column's type, in the format the client asked for.

`masked_value` takes one value as the server sent it (text or binary form) and returns
the masked value in the same type and format, or None for NULL where the type has no
masked form (`has_masked_form` says which types have one, so a caller can count the
others). What each method gives, by type:

- text types (text, varchar, bpchar, name, unknown, xml): the masked text (`mask_text`;
  XML-escaped for xml); json and jsonb a JSON string of it, bytea its bytes.
- int2, int4, int8, numeric: `redact` 0; `partial` the same as redact (a part of a number,
  its leading digits, is most of what it says); `generalise` the lower bound of its range
  (custos/masking/generalise.py); `pseudonym` keyed digits: an integer of the same type
  (any in its range), a numeric with the same sign, as many digits before the point and
  the same scale. NaN and the infinities identify no one: pseudonym and generalise keep
  them (so for dates and timestamps).
- date, timestamp, timestamptz: `redact` 1900-01-01 (at midnight, UTC); `partial` and
  `generalise` the first day of its year (the year is kept, BC too; a timestamptz's year
  as its text shows it, in binary its UTC year); `pseudonym` a keyed
  date between 1900 and 2099 (a timestamp at a keyed second of it). Text forms are read
  in the ISO DateStyle, PostgreSQL's default; another DateStyle's text becomes NULL.
- uuid: `redact` the nil uuid; `partial` and `generalise` redact; `pseudonym` 16 keyed
  bytes with the version 4 and variant bits set.
- inet and cidr: the family and prefix length are kept; `redact` the address 0.0.0.0 or
  ::; `partial` the /24 (IPv4) or /48 (IPv6) network the address is in, `generalise` the
  /16 or /32 one; `pseudonym` a keyed address (its host bits zero for a cidr).
- arrays of all these: each element masked by its type's rule, NULLs kept, the
  dimensions and bounds kept, in text (quoted as array_out does) and binary.
- composites (record, and user types whose text reads as one), in text only: every field
  masked as text (the fields' types are not in the RowDescription), quoted as record_out.

`null` always gives NULL. A pseudonym is keyed on the value's canonical text (`42`,
`2024-05-17`, `12.5` for 12.50, a timestamptz in UTC), so one value gives one pseudonym
in text and in binary form, and as text in a text column (with a `keyed` that hashes as
the text masker does). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from xml.sax.saxutils import escape as xml_escape

from custos.masking.generalise import generalised_scaled
from custos.policy.models import PSEUDONYM_METHODS, MaskMethod

Keyed = Callable[[str, bytes], bytes]
"""(category, value bytes) -> 32 bytes of keyed material (HMAC-SHA-256 under the key)."""
MaskText = Callable[[str], "str | None"]
"""Masks one text value, with the column's category and method bound."""

# Type OIDs, as pg_type has them (checked against the server in the tests).
TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, XML = 25, 1043, 1042, 19, 705, 142
JSON, JSONB, BYTEA = 114, 3802, 17
INT2, INT4, INT8, NUMERIC = 21, 23, 20, 1700
DATE, TIMESTAMP, TIMESTAMPTZ = 1082, 1114, 1184
UUID, INET, CIDR = 2950, 869, 650
RECORD = 2249
# pg_type.typarray of each supported element type.
ARRAY_OF = {
    TEXT: 1009,
    VARCHAR: 1015,
    BPCHAR: 1014,
    NAME: 1003,
    XML: 143,
    JSON: 199,
    JSONB: 3807,
    BYTEA: 1001,
    INT2: 1005,
    INT4: 1007,
    INT8: 1016,
    NUMERIC: 1231,
    DATE: 1182,
    TIMESTAMP: 1115,
    TIMESTAMPTZ: 1185,
    UUID: 2951,
    INET: 1041,
    CIDR: 651,
}
_ELEMENT_OF = {array: element for element, array in ARRAY_OF.items()}
_TEXT_TYPES = frozenset({TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, XML})
_INTEGER_BYTES = {INT2: 2, INT4: 4, INT8: 8}
_FIRST_USER_OID = 16384  # FirstNormalObjectId: the types below are PostgreSQL's own

_COARSE = frozenset({MaskMethod.PARTIAL, MaskMethod.GENERALISE})


def has_masked_form(type_oid: int, binary: bool) -> bool:
    """Whether values of this type, in this format, have a masked form other than NULL
    (a user type's text has one where it reads as a record)."""
    element = _ELEMENT_OF.get(type_oid, type_oid)
    if element in _TEXT_TYPES or element in _TYPED or element in (JSON, JSONB, BYTEA):
        return True
    return not binary and (type_oid == RECORD or type_oid >= _FIRST_USER_OID)


def masked_value(
    value: bytes,
    type_oid: int,
    binary: bool,
    category: str,
    method: MaskMethod,
    keyed: Keyed,
    mask_text: MaskText,
) -> bytes | None:
    """The masked value encoded for the type and format; None: NULL (no valid masked form,
    or the method is null). Never the value itself, nor any part the method hides."""
    if method is MaskMethod.NULL:
        return None
    rule = _Rule(category, method, keyed, mask_text)
    try:
        if type_oid in _ELEMENT_OF:
            element = _ELEMENT_OF[type_oid]
            if binary:
                return _binary_array(value, element, type_oid, rule)
            return _text_array(value, element, rule)
        if binary or (type_oid < _FIRST_USER_OID and type_oid != RECORD):
            return rule.masked(value, type_oid, binary)
        return _text_record(value, rule)
    except (ValueError, struct.error, UnicodeDecodeError, RecursionError):
        return None  # not a value of the type as expected: nothing of it is passed on


@dataclass(frozen=True, slots=True)
class _Rule:
    category: str
    method: MaskMethod
    keyed: Keyed
    mask_text: MaskText

    def masked(self, value: bytes, type_oid: int, binary: bool) -> bytes | None:
        if type_oid in _TEXT_TYPES or type_oid in (JSON, JSONB, BYTEA):
            return self._masked_text_type(value, type_oid, binary)
        typed = _TYPED.get(type_oid)
        if typed is None:
            return None
        read, write = typed
        return write(self._masked_typed(read(value, binary, type_oid)), binary, type_oid)

    def material(self, canonical: str) -> bytes:
        return self.keyed(self.category, canonical.encode())

    def _masked_text_type(self, value: bytes, type_oid: int, binary: bool) -> bytes | None:
        if type_oid == BYTEA:
            raw = value if binary else _bytea_from_text(value)
            text = raw.decode(errors="replace")  # bytes need not be text: masked all the same
        elif type_oid == JSONB and binary:
            if value[:1] != b"\x01":
                raise ValueError("unknown jsonb version")
            text = value[1:].decode()
        else:
            text = value.decode()
        if type_oid in (JSON, JSONB):
            # A JSON string is masked as the text it holds (the same pseudonym as that text
            # in a text column); any other document as its whole text.
            document = json.loads(text)
            if isinstance(document, str):
                text = document
        masked = self.mask_text(text)
        if masked is None:
            return None
        if type_oid == XML:
            return xml_escape(masked).encode()  # well-formed whatever the mask kept
        if type_oid in _TEXT_TYPES:
            return masked.encode()
        if type_oid == BYTEA:
            return masked.encode() if binary else b"\\x" + masked.encode().hex().encode()
        document = json.dumps(masked).encode()
        return b"\x01" + document if type_oid == JSONB and binary else document

    def _masked_typed(self, value: _Typed) -> _Typed:
        if self.method is MaskMethod.REDACT:
            return value.redacted()
        if self.method in PSEUDONYM_METHODS:
            return value.pseudonym(self.material(value.canonical()))
        if self.method is MaskMethod.GENERALISE:
            return value.generalised()
        if self.method is MaskMethod.PARTIAL:
            return value.partial()
        raise ValueError(f"no typed form for method {self.method}")


class _Typed:
    """A value read from its text or binary form, as the methods see it."""

    def canonical(self) -> str:
        raise NotImplementedError

    def redacted(self) -> _Typed:
        raise NotImplementedError

    def pseudonym(self, material: bytes) -> _Typed:
        raise NotImplementedError

    def generalised(self) -> _Typed:
        return self.redacted()

    def partial(self) -> _Typed:
        return self.redacted()


def _drawn_int(material: bytes, label: bytes, below: int) -> int:
    """A keyed integer in [0, below), from the material stretched by SHA-256 in counter
    mode under a label (so each use draws from its own stream); bias under 2**-128."""
    bits = below.bit_length() + 128
    stream = b""
    counter = 0
    while len(stream) * 8 < bits:
        stream += hashlib.sha256(material + label + counter.to_bytes(4, "big")).digest()
        counter += 1
    return int.from_bytes(stream, "big") % below


# --- numbers -------------------------------------------------------------------------

_INTEGER_TEXT = re.compile(rb"-?\d+")
_NUMERIC_TEXT = re.compile(r"(-?)(\d+)(?:\.(\d+))?")
_NUMERIC_SPECIAL = {"NaN": 0xC000, "Infinity": 0xD000, "-Infinity": 0xF000}
_NUMERIC_HEADER = struct.Struct("!hhHH")
_NUMERIC_NEGATIVE = 0x4000


@dataclass(frozen=True, slots=True)
class _Number(_Typed):
    """An integer or numeric: `scaled / 10**scale`, or a special (NaN, infinities)."""

    scaled: int
    scale: int
    integer_bytes: int  # 0 for numeric
    special: str | None = None

    def canonical(self) -> str:
        if self.special is not None:
            return self.special
        scaled, scale = self.scaled, self.scale
        while scale and scaled % 10 == 0:
            scaled, scale = scaled // 10, scale - 1
        return _scaled_text(scaled, scale)

    def redacted(self) -> _Number:
        return _Number(0, self.scale, self.integer_bytes)

    def generalised(self) -> _Number:
        if self.special is not None:
            return self
        return _Number(generalised_scaled(self.scaled, self.scale), self.scale, self.integer_bytes)

    def pseudonym(self, material: bytes) -> _Number:
        if self.special is not None:
            return self
        if self.integer_bytes:
            drawn = int.from_bytes(material[: self.integer_bytes], "big", signed=True)
            return _Number(drawn, 0, self.integer_bytes)
        whole_digits = len(str(abs(self.scaled) // 10**self.scale))
        lowest = 10 ** (whole_digits - 1) if whole_digits > 1 else 0
        span = 10 ** (whole_digits + self.scale) - lowest * 10**self.scale
        drawn = lowest * 10**self.scale + _drawn_int(material, b"numeric", span)
        return _Number(-drawn if self.scaled < 0 else drawn, self.scale, 0)


def _scaled_text(scaled: int, scale: int) -> str:
    digits = str(abs(scaled)).rjust(scale + 1, "0")
    if scale:
        digits = f"{digits[:-scale]}.{digits[-scale:]}"
    return ("-" if scaled < 0 else "") + digits


def _read_number(value: bytes, binary: bool, type_oid: int) -> _Number:
    size = _INTEGER_BYTES.get(type_oid, 0)
    if size:
        if binary:
            if len(value) != size:
                raise ValueError("integer of the wrong width")
            return _Number(int.from_bytes(value, "big", signed=True), 0, size)
        if not _INTEGER_TEXT.fullmatch(value):
            raise ValueError("not an integer")
        return _Number(int(value), 0, size)
    if binary:
        return _read_numeric_binary(value)
    text = value.decode()
    if text in _NUMERIC_SPECIAL:
        return _Number(0, 0, 0, text)
    match = _NUMERIC_TEXT.fullmatch(text)
    if match is None:
        raise ValueError("not a numeric")
    sign, whole, fraction = match.groups()
    scaled = int(whole + (fraction or ""))
    return _Number(-scaled if sign else scaled, len(fraction or ""), 0)


def _read_numeric_binary(value: bytes) -> _Number:
    count, weight, sign, scale = _NUMERIC_HEADER.unpack_from(value)
    if len(value) != _NUMERIC_HEADER.size + 2 * count:
        raise ValueError("numeric of the wrong length")
    for special, code in _NUMERIC_SPECIAL.items():
        if sign == code:
            return _Number(0, 0, 0, special)
    groups = 0
    for (group,) in struct.iter_unpack("!h", value[_NUMERIC_HEADER.size :]):
        groups = groups * 10000 + group
    # The groups' value is groups * 10000**(weight - count + 1); digits past dscale are 0.
    exponent = 4 * (weight - count + 1) + scale
    scaled = groups * 10**exponent if exponent >= 0 else groups // 10**-exponent
    return _Number(-scaled if sign == _NUMERIC_NEGATIVE else scaled, scale, 0)


def _write_number(number: _Typed, binary: bool, type_oid: int) -> bytes:
    assert isinstance(number, _Number)
    if number.integer_bytes:
        if binary:
            return number.scaled.to_bytes(number.integer_bytes, "big", signed=True)
        return str(number.scaled).encode()
    if number.special is not None:
        if binary:
            return _NUMERIC_HEADER.pack(0, 0, _NUMERIC_SPECIAL[number.special], 0)
        return number.special.encode()
    if not binary:
        return _scaled_text(number.scaled, number.scale).encode()
    return _numeric_binary(number.scaled, number.scale)


def _numeric_binary(scaled: int, scale: int) -> bytes:
    """numeric_send's form: base-10000 digit groups aligned on the decimal point."""
    padding = -scale % 4  # fraction digits to add so the groups end on a boundary
    magnitude = abs(scaled) * 10**padding
    groups: list[int] = []
    while magnitude:
        magnitude, group = divmod(magnitude, 10000)
        groups.append(group)
    groups.reverse()
    weight = len(groups) - 1 - (scale + padding) // 4
    while groups and groups[-1] == 0:
        groups.pop()
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    if not groups:
        weight = 0
    sign = _NUMERIC_NEGATIVE if scaled < 0 else 0
    header = _NUMERIC_HEADER.pack(len(groups), weight, sign, scale)
    return header + b"".join(struct.pack("!h", group) for group in groups)


# --- dates and timestamps ------------------------------------------------------------

_POSTGRES_EPOCH_DAY = 2451545  # 2000-01-01 as a Julian day
_DAY_MICROSECONDS = 86_400_000_000
_DATE_INFINITY = {(1 << 31) - 1: "infinity", -(1 << 31): "-infinity"}
_TIMESTAMP_INFINITY = {(1 << 63) - 1: "infinity", -(1 << 63): "-infinity"}
_PSEUDONYM_FIRST_DAY = 2415021  # 1900-01-01
_PSEUDONYM_DAYS = 73049  # to 2099-12-31
_TEXT_DATE_TIME = re.compile(
    r"(\d{4,})-(\d\d)-(\d\d)"
    r"(?: (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?"
    r"(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)?"
    r"( BC)?"
)


def _julian_day(year: int, month: int, day: int) -> int:
    """PostgreSQL's date2j: the Julian day of a proleptic Gregorian date (year 0 = 1 BC)."""
    if month > 2:
        month, year = month + 1, year + 4800
    else:
        month, year = month + 13, year + 4799
    century = year // 100
    return year * 365 - 32167 + year // 4 - century + century // 4 + 7834 * month // 256 + day


def _calendar_date(julian: int) -> tuple[int, int, int]:
    """PostgreSQL's j2date: the inverse of _julian_day."""
    julian += 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    year = julian * 4 // 1461
    julian = ((julian + 305) % 365 if year else (julian + 306) % 366) + 123
    year += quad * 4
    quad = julian * 2141 // 65536
    return year - 4800, (quad + 10) % 12 + 1, julian - 7834 * quad // 256


@dataclass(frozen=True, slots=True)
class _Moment(_Typed):
    """A date or timestamp: microseconds since 2000-01-01 (UTC for timestamptz; whole
    days for a date), or an infinity. `offset`: a timestamptz text's zone, in seconds."""

    microseconds: int
    type_oid: int
    offset: int = 0
    infinity: str | None = None

    def canonical(self) -> str:
        if self.infinity is not None:
            return self.infinity
        return _moment_text(self.microseconds, self.type_oid, 0)

    def redacted(self) -> _Moment:
        days = _PSEUDONYM_FIRST_DAY - _POSTGRES_EPOCH_DAY
        return _Moment(days * _DAY_MICROSECONDS, self.type_oid)

    def generalised(self) -> _Moment:
        if self.infinity is not None:
            return self
        local = self.microseconds + self.offset * 1_000_000
        year, _, _ = _calendar_date(local // _DAY_MICROSECONDS + _POSTGRES_EPOCH_DAY)
        first = (_julian_day(year, 1, 1) - _POSTGRES_EPOCH_DAY) * _DAY_MICROSECONDS
        # 4714 BC's first day is before PostgreSQL's first (its Julian day 0, 24 November).
        earliest = -_POSTGRES_EPOCH_DAY * _DAY_MICROSECONDS
        return _Moment(max(first - self.offset * 1_000_000, earliest), self.type_oid, self.offset)

    def partial(self) -> _Moment:
        return self.generalised()

    def pseudonym(self, material: bytes) -> _Moment:
        if self.infinity is not None:
            return self
        day = (
            _PSEUDONYM_FIRST_DAY
            - _POSTGRES_EPOCH_DAY
            + _drawn_int(material, b"day", _PSEUDONYM_DAYS)
        )
        second = 0 if self.type_oid == DATE else _drawn_int(material, b"second", 86400)
        return _Moment(day * _DAY_MICROSECONDS + second * 1_000_000, self.type_oid)


def _read_moment(value: bytes, binary: bool, type_oid: int) -> _Moment:
    if binary:
        if type_oid == DATE:
            (days,) = struct.unpack("!i", value)
            return _Moment(days * _DAY_MICROSECONDS, DATE, 0, _DATE_INFINITY.get(days))
        (microseconds,) = struct.unpack("!q", value)
        return _Moment(microseconds, type_oid, 0, _TIMESTAMP_INFINITY.get(microseconds))
    text = value.decode()
    if text in ("infinity", "-infinity"):
        return _Moment(0, type_oid, 0, text)
    match = _TEXT_DATE_TIME.fullmatch(text)
    if match is None:
        raise ValueError("not an ISO date or timestamp")
    year, month, day, hour, minute, second, fraction, sign, zone_h, zone_m, zone_s, era = (
        match.groups()
    )
    if (hour is None) != (type_oid == DATE) or (sign is None) != (type_oid != TIMESTAMPTZ):
        raise ValueError("not the form of the type")
    astronomical = 1 - int(year) if era else int(year)
    days = _julian_day(astronomical, int(month), int(day)) - _POSTGRES_EPOCH_DAY
    clock = int(hour or 0) * 3600 + int(minute or 0) * 60 + int(second or 0)
    microseconds = days * _DAY_MICROSECONDS + clock * 1_000_000
    microseconds += int((fraction or "").ljust(6, "0"))
    offset = int(zone_h or 0) * 3600 + int(zone_m or 0) * 60 + int(zone_s or 0)
    offset = -offset if sign == "-" else offset
    return _Moment(microseconds - offset * 1_000_000, type_oid, offset)


def _write_moment(moment: _Typed, binary: bool, type_oid: int) -> bytes:
    assert isinstance(moment, _Moment)
    if binary:
        if type_oid == DATE:
            infinity = {text: days for days, text in _DATE_INFINITY.items()}
            days = infinity.get(moment.infinity or "", moment.microseconds // _DAY_MICROSECONDS)
            return struct.pack("!i", days)
        infinity = {text: at for at, text in _TIMESTAMP_INFINITY.items()}
        return struct.pack("!q", infinity.get(moment.infinity or "", moment.microseconds))
    if moment.infinity is not None:
        return moment.infinity.encode()
    return _moment_text(moment.microseconds, type_oid, moment.offset).encode()


def _moment_text(microseconds: int, type_oid: int, offset: int) -> str:
    """The ISO DateStyle's text: `2024-05-17`, `2024-05-17 13:45:12.5`, `... +02`, BC."""
    local = microseconds + offset * 1_000_000
    days, clock = divmod(local, _DAY_MICROSECONDS)
    year, month, day = _calendar_date(days + _POSTGRES_EPOCH_DAY)
    era = "" if year > 0 else " BC"
    text = f"{year if year > 0 else 1 - year:04d}-{month:02d}-{day:02d}"
    if type_oid != DATE:
        seconds, fraction = divmod(clock, 1_000_000)
        text += f" {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if fraction:
            text += "." + f"{fraction:06d}".rstrip("0")
    if type_oid == TIMESTAMPTZ:
        sign = "-" if offset < 0 else "+"
        hours, rest = divmod(abs(offset), 3600)
        text += f"{sign}{hours:02d}"
        if rest:
            text += f":{rest // 60:02d}" + (f":{rest % 60:02d}" if rest % 60 else "")
    return text + era


# --- uuid ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Uuid(_Typed):
    raw: bytes

    def canonical(self) -> str:
        hexed = self.raw.hex()
        return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"

    def redacted(self) -> _Uuid:
        return _Uuid(bytes(16))

    def pseudonym(self, material: bytes) -> _Uuid:
        drawn = bytearray(material[:16])
        drawn[6] = drawn[6] & 0x0F | 0x40  # version 4
        drawn[8] = drawn[8] & 0x3F | 0x80  # RFC 4122 variant
        return _Uuid(bytes(drawn))


def _read_uuid(value: bytes, binary: bool, type_oid: int) -> _Uuid:
    raw = value if binary else bytes.fromhex(value.decode().replace("-", ""))
    if len(raw) != 16:
        raise ValueError("a uuid has 16 bytes")
    return _Uuid(raw)


def _write_uuid(value: _Typed, binary: bool, type_oid: int) -> bytes:
    assert isinstance(value, _Uuid)
    return value.raw if binary else value.canonical().encode()


# --- inet and cidr -------------------------------------------------------------------

_FAMILY_BITS = {2: 32, 3: 128}  # PGSQL_AF_INET, PGSQL_AF_INET6
_PARTIAL_BITS = {2: 24, 3: 48}
_GENERAL_BITS = {2: 16, 3: 32}


@dataclass(frozen=True, slots=True)
class _Address(_Typed):
    family: int
    bits: int  # the prefix length
    address: int
    cidr: bool

    def canonical(self) -> str:
        return f"{self._ip()}/{self.bits}"

    def redacted(self) -> _Address:
        return _Address(self.family, self.bits, 0, self.cidr)

    def partial(self) -> _Address:
        return self._network(_PARTIAL_BITS[self.family])

    def generalised(self) -> _Address:
        return self._network(_GENERAL_BITS[self.family])

    def pseudonym(self, material: bytes) -> _Address:
        drawn = int.from_bytes(material[: _FAMILY_BITS[self.family] // 8], "big")
        masked = _Address(self.family, self.bits, drawn, self.cidr)
        return masked._network(self.bits) if self.cidr else masked

    def _network(self, kept: int) -> _Address:
        width = _FAMILY_BITS[self.family]
        hidden = width - min(kept, self.bits if self.cidr else width)
        return _Address(self.family, self.bits, self.address >> hidden << hidden, self.cidr)

    def _ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        if self.family == 2:
            return ipaddress.IPv4Address(self.address)
        return ipaddress.IPv6Address(self.address)


def _read_address(value: bytes, binary: bool, type_oid: int) -> _Address:
    if binary:
        family, bits, _, size = value[:4]
        raw = value[4:]
        if family not in _FAMILY_BITS or len(raw) != size or size * 8 != _FAMILY_BITS[family]:
            raise ValueError("not an inet")
        return _Address(family, bits, int.from_bytes(raw, "big"), type_oid == CIDR)
    text, _, prefix = value.decode().partition("/")
    ip = ipaddress.ip_address(text)
    family = 2 if ip.version == 4 else 3
    width = _FAMILY_BITS[family]
    return _Address(family, int(prefix) if prefix else width, int(ip), type_oid == CIDR)


def _write_address(value: _Typed, binary: bool, type_oid: int) -> bytes:
    assert isinstance(value, _Address)
    width = _FAMILY_BITS[value.family]
    if binary:
        header = bytes((value.family, value.bits, int(value.cidr), width // 8))
        return header + value.address.to_bytes(width // 8, "big")
    if value.cidr or value.bits != width:
        return value.canonical().encode()
    return str(value._ip()).encode()


_Reader = Callable[[bytes, bool, int], _Typed]
_Writer = Callable[[_Typed, bool, int], bytes]
_TYPED: dict[int, tuple[_Reader, _Writer]] = {
    **dict.fromkeys((INT2, INT4, INT8, NUMERIC), (_read_number, _write_number)),
    **dict.fromkeys((DATE, TIMESTAMP, TIMESTAMPTZ), (_read_moment, _write_moment)),
    UUID: (_read_uuid, _write_uuid),
    **dict.fromkeys((INET, CIDR), (_read_address, _write_address)),
}


def _bytea_from_text(value: bytes) -> bytes:
    """bytea's text form's bytes: hex (`\\x...`, the default) or the escape format."""
    if value.startswith(b"\\x"):
        return bytes.fromhex(value[2:].decode())
    raw = bytearray()
    index = 0
    while index < len(value):
        if value[index : index + 2] == b"\\\\":
            raw.append(0x5C)
            index += 2
        elif value[index : index + 1] == b"\\":
            raw.append(int(value[index + 1 : index + 4], 8))
            index += 4
        else:
            raw.append(value[index])
            index += 1
    return bytes(raw)


# --- arrays --------------------------------------------------------------------------

_ARRAY_HEADER = struct.Struct("!iiI")
_DIMENSION = struct.Struct("!ii")
_LENGTH = struct.Struct("!i")
_ARRAY_SPACE = " \t\n\r\v\f"
_ARRAY_BOUNDS = re.compile(r"(?:\[-?\d+:-?\d+\])+=")


def _binary_array(value: bytes, element: int, array: int, rule: _Rule) -> bytes:
    dimensions, _, element_oid = _ARRAY_HEADER.unpack_from(value)
    if element_oid != element or not 0 <= dimensions <= 6:
        raise ValueError("not an array of the type")
    offset = _ARRAY_HEADER.size + dimensions * _DIMENSION.size
    count = 1 if dimensions else 0
    for dimension in range(dimensions):
        length, _ = _DIMENSION.unpack_from(value, _ARRAY_HEADER.size + dimension * 8)
        count *= length
    elements: list[bytes] = []
    has_nulls = False
    for _ in range(count):
        (length,) = _LENGTH.unpack_from(value, offset)
        offset += 4
        masked = None
        if length >= 0:
            masked = rule.masked(value[offset : offset + length], element, True)
            offset += length
        has_nulls |= masked is None
        elements.append(_LENGTH.pack(-1) if masked is None else _LENGTH.pack(len(masked)) + masked)
    if offset != len(value):
        raise ValueError("array of the wrong length")
    header = _ARRAY_HEADER.pack(dimensions, int(has_nulls), element)
    return (
        header
        + value[_ARRAY_HEADER.size : _ARRAY_HEADER.size + dimensions * 8]
        + b"".join(elements)
    )


def _text_array(value: bytes, element: int, rule: _Rule) -> bytes:
    text = value.decode()
    bounds = _ARRAY_BOUNDS.match(text)
    prefix = bounds.group(0) if bounds else ""
    parser = _ArrayText(text, len(prefix))
    masked = parser.masked(element, rule)
    if parser.position != len(text):
        raise ValueError("trailing text after the array")
    return (prefix + masked).encode()


class _ArrayText:
    """array_in's reading of an array's text (delimiter `,`), masked as it is read."""

    def __init__(self, text: str, position: int) -> None:
        self.text = text
        self.position = position

    def masked(self, element: int, rule: _Rule) -> str:
        self._expect("{")
        parts: list[str] = []
        if self._peek() == "}":
            self.position += 1
            return "{}"
        while True:
            if self._peek() == "{":
                parts.append(self.masked(element, rule))
            else:
                parts.append(self._masked_element(element, rule))
            following = self._next()
            if following == "}":
                return "{" + ",".join(parts) + "}"
            if following != ",":
                raise ValueError("malformed array text")

    def _masked_element(self, element: int, rule: _Rule) -> str:
        quoted = self._peek() == '"'
        value = self._quoted() if quoted else self._unquoted()
        if not quoted and value.upper() == "NULL":
            return "NULL"
        masked = rule.masked(value.encode(), element, False)
        return "NULL" if masked is None else _array_quoted(masked.decode())

    def _quoted(self) -> str:
        self.position += 1
        characters: list[str] = []
        while True:
            character = self._next()
            if character == '"':
                return "".join(characters)
            characters.append(self._next() if character == "\\" else character)

    def _unquoted(self) -> str:
        characters: list[str] = []
        while self._peek() not in ",}":
            character = self._next()
            if character in '{"':
                raise ValueError("malformed array text")
            characters.append(self._next() if character == "\\" else character)
        return "".join(characters).strip(_ARRAY_SPACE)

    def _peek(self) -> str:
        if self.position >= len(self.text):
            raise ValueError("array text ends early")
        return self.text[self.position]

    def _next(self) -> str:
        character = self._peek()
        self.position += 1
        return character

    def _expect(self, character: str) -> None:
        if self._next() != character:
            raise ValueError("malformed array text")


def _array_quoted(value: str) -> str:
    """An element as array_out writes it: quoted where it must be."""
    if value and value.upper() != "NULL" and not any(c in '{}",\\' + _ARRAY_SPACE for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- composites ----------------------------------------------------------------------


def _text_record(value: bytes, rule: _Rule) -> bytes | None:
    """A row's text, every field masked as text; None where it does not read as a row."""
    text = value.decode()
    if not (text.startswith("(") and text.endswith(")")):
        return None
    fields: list[str | None] = []
    position, end = 1, len(text) - 1
    while True:
        characters: list[str] = []
        present = quoted = False
        while position < end and (quoted or text[position] != ","):
            present = True
            character = text[position]
            if character == "\\":
                position += 1
                if position >= end:
                    return None
                characters.append(text[position])
            elif character == '"' and quoted and text[position + 1] == '"':
                characters.append('"')
                position += 1
            elif character == '"':
                quoted = not quoted
            else:
                characters.append(character)
            position += 1
        if quoted:
            return None
        fields.append("".join(characters) if present else None)  # nothing at all: NULL
        if position >= end:
            break
        position += 1
    masked = [None if field is None else rule.mask_text(field) for field in fields]
    return ("(" + ",".join(_record_quoted(field) for field in masked) + ")").encode()


def _record_quoted(field: str | None) -> str:
    """A field as record_out writes it: nothing for NULL, quoted where it must be."""
    if field is None:
        return ""
    if field and not any(c in '"\\(),' or c.isspace() for c in field):
        return field
    return '"' + field.replace("\\", "\\\\").replace('"', '""') + '"'
