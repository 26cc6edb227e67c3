# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The masked-row fast path: a DataRow's masked columns rewritten in C, on its bytes.

The rewriter (rewriter.py) plans each result column once; where every masked column of a
result is a text type masked in part (`partial`) or by one constant (`redact`, `null`, a
computed column's placeholder), its rows come here instead of being split into Python
values. Each value is read and written as bytes, with no object made per value: this is
what brings a masked read within a few times a direct one.

It does exactly what values.partial does, byte for byte (a property test holds the two
to each other), for values of plain ASCII. A row holding any other value, or not well
formed, is handed back (None) to the rewriter's general path, which masks it or reports
the malformed row: nothing is passed on unmasked.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

# What a column's values become: one code a column (RowMasker's `ways`).
cdef enum:
    _KEEP = 0
    _CONSTANT = 1  # the column's constant; a NULL stays NULL
    _CONSTANT_AND_NULL = 2  # the column's constant, a NULL too (a computed value's NULL tells)
    _PARTIAL_EMAIL = 3
    _PARTIAL_PHONE = 4
    _PARTIAL_IBAN = 5
    _PARTIAL_NAME = 6
    _PARTIAL_CARD = 7
    _PARTIAL_OTHER = 8

KEEP = _KEEP
CONSTANT = _CONSTANT
CONSTANT_AND_NULL = _CONSTANT_AND_NULL
PARTIAL_OTHER = _PARTIAL_OTHER
PARTIAL_CATEGORIES = {
    "email": _PARTIAL_EMAIL,
    "phone": _PARTIAL_PHONE,
    "iban": _PARTIAL_IBAN,
    "name": _PARTIAL_NAME,
    "card": _PARTIAL_CARD,
}
"""The categories whose partial form is made here; `ip` is a constant, others PARTIAL_OTHER."""

# The longest a partial form is, for a value of n bytes: a name's initials (2 a letter, 1 a
# space between) for n one-letter words, `***@` before an email's domain, `***` for a short
# value.
cdef inline Py_ssize_t _partial_bound(Py_ssize_t size) noexcept:
    return 2 * size + 4


cdef inline bint _is_space(unsigned char byte) noexcept:
    # str.isspace over ASCII: tab to carriage return, the four separators, and space.
    return (9 <= byte <= 13) or (28 <= byte <= 32)


cdef inline bint _is_digit(unsigned char byte) noexcept:
    return 48 <= byte <= 57


cdef inline bint _is_letter(unsigned char byte) noexcept:
    return (65 <= byte <= 90) or (97 <= byte <= 122)


cdef inline char* _stars(char* out, Py_ssize_t count) noexcept:
    cdef Py_ssize_t i
    for i in range(count):
        out[i] = 42  # '*'
    return out + count


cdef inline char* _email(const unsigned char* value, Py_ssize_t size, char* out) noexcept:
    # The domain after the last '@' kept, when something comes before it.
    cdef Py_ssize_t at = size - 1
    while at >= 0 and value[at] != 64:
        at -= 1
    out = _stars(out, 3)
    if at <= 0:
        return out
    out[0] = 64
    memcpy(out + 1, value + at + 1, size - at - 1)
    return out + size - at


cdef inline Py_ssize_t _country_code_end(const unsigned char* value, Py_ssize_t size) noexcept:
    # Where a leading country code (`+44`, `0044`, spaces before) ends; 0 without one.
    cdef Py_ssize_t at = 0
    cdef Py_ssize_t digits = 0
    while at < size and _is_space(value[at]):
        at += 1
    if at < size and value[at] == 43:  # '+'
        at += 1
    elif at + 1 < size and value[at] == 48 and value[at + 1] == 48:  # '00'
        at += 2
    else:
        return 0
    while at + digits < size and digits < 3 and _is_digit(value[at + digits]):
        digits += 1
    return at + digits if digits else 0


cdef inline char* _phone(const unsigned char* value, Py_ssize_t size, char* out) noexcept:
    # The country code kept, every later digit hidden, the layout kept.
    cdef Py_ssize_t kept = _country_code_end(value, size)
    cdef Py_ssize_t i
    memcpy(out, value, kept)
    for i in range(kept, size):
        out[i] = 42 if _is_digit(value[i]) else value[i]
    return out + size


cdef inline char* _iban(const unsigned char* value, Py_ssize_t size, char* out) noexcept:
    # The country and the last four characters, spaces dropped, the rest hidden.
    cdef Py_ssize_t compact = 0
    cdef Py_ssize_t i
    cdef Py_ssize_t taken = 0
    cdef char last[4]
    for i in range(size):
        if value[i] != 32:
            compact += 1
    if compact < 8:
        return _stars(out, size)
    for i in range(size):
        if value[i] == 32:
            continue
        if taken < 2:
            out[taken] = value[i]
        elif taken >= compact - 4:
            last[taken - compact + 4] = value[i]
        taken += 1
    out = _stars(out + 2, compact - 6)
    memcpy(out, last, 4)
    return out + 4


cdef inline char* _name(const unsigned char* value, Py_ssize_t size, char* out) noexcept:
    # Each word's first letter, upper-cased, with a full stop; words split at spaces.
    cdef char* start = out
    cdef Py_ssize_t i = 0
    cdef bint found
    while i < size:
        while i < size and _is_space(value[i]):
            i += 1
        if i == size:
            break
        found = False
        while i < size and not _is_space(value[i]):
            if not found and _is_letter(value[i]):
                if out != start:
                    out[0] = 32
                    out += 1
                out[0] = value[i] & 0xDF  # upper case
                out[1] = 46  # '.'
                out += 2
                found = True
            i += 1
    if out == start:
        return _stars(out, 3)
    return out


cdef inline char* _card(const unsigned char* value, Py_ssize_t size, char* out) noexcept:
    # The last four digits kept, the digits before them hidden.
    cdef Py_ssize_t digits = 0
    cdef Py_ssize_t i
    for i in range(size):
        if _is_digit(value[i]):
            digits += 1
    cdef Py_ssize_t hide = digits - 4
    for i in range(size):
        if hide > 0 and _is_digit(value[i]):
            out[i] = 42
            hide -= 1
        else:
            out[i] = value[i]
    return out + size


cdef inline char* _other(const unsigned char* value, Py_ssize_t size, char* out) noexcept:
    # The first character and `***`, for a value longer than three.
    if size > 3:
        out[0] = value[0]
        out += 1
    return _stars(out, 3)


cdef inline bint _plain_ascii(const unsigned char* value, Py_ssize_t size) noexcept:
    cdef Py_ssize_t i
    for i in range(size):
        if value[i] & 0x80:
            return False
    return True


cdef class RowMasker:
    """Masks the rows of one result: `ways` holds a code a column, `constants` the value
    (with its length word) of each column masked by a constant. Counts each column's
    masked values until taken."""

    cdef bytes _ways
    cdef tuple _constants
    cdef Py_ssize_t _columns
    cdef long long* _counts
    cdef char* _buffer
    cdef Py_ssize_t _capacity

    def __cinit__(self, bytes ways, tuple constants):
        if len(constants) != len(ways):
            raise ValueError("one constant a column, b'' where none is used")
        self._ways = ways
        self._constants = constants
        self._columns = len(ways)
        self._counts = <long long*>malloc(max(self._columns, 1) * sizeof(long long))
        self._buffer = NULL
        self._capacity = 0
        if self._counts == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self._columns):
            self._counts[i] = 0

    def __dealloc__(self):
        free(self._counts)
        free(self._buffer)

    def take_counts(self) -> list:
        """Each column's count of values masked since the last take."""
        cdef Py_ssize_t position
        counts = []
        for position in range(self._columns):
            counts.append(self._counts[position])
            self._counts[position] = 0
        return counts

    cdef bint _reserve(self, Py_ssize_t needed):
        if needed <= self._capacity:
            return True
        cdef char* grown = <char*>realloc(self._buffer, needed)
        if grown == NULL:
            return False
        self._buffer = grown
        self._capacity = needed
        return True

    def masked_row(self, bytes body):
        """The DataRow body with its masked columns rewritten; None where the row is not one
        this path masks (a value not plain ASCII, a malformed row): the general path then
        takes it, and nothing of it has been counted."""
        cdef const unsigned char* row = <const unsigned char*>PyBytes_AS_STRING(body)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
        cdef const unsigned char* ways = <const unsigned char*>PyBytes_AS_STRING(self._ways)
        cdef Py_ssize_t columns = self._columns
        cdef Py_ssize_t count, position, offset, length, end, needed
        cdef unsigned char way
        cdef bytes constant
        if size < 2:
            return None
        count = (row[0] << 8) | row[1]
        # First pass: check the row and bound what it becomes, before writing or counting.
        needed = size
        offset = 2
        for position in range(count):
            if offset + 4 > size:
                return None
            way = ways[position] if position < columns else _KEEP
            if row[offset] & 0x80:  # -1: NULL
                offset += 4
                if way == _CONSTANT_AND_NULL:
                    needed += PyBytes_GET_SIZE(self._constants[position])
                continue
            length = (row[offset] << 24) | (row[offset + 1] << 16) | (row[offset + 2] << 8)
            length |= row[offset + 3]
            end = offset + 4 + length
            if end > size:
                return None
            if way == _CONSTANT or way == _CONSTANT_AND_NULL:
                needed += PyBytes_GET_SIZE(self._constants[position])
            elif way != _KEEP:
                if not _plain_ascii(row + offset + 4, length):
                    return None
                needed += _partial_bound(length)
            offset = end
        if offset != size or not self._reserve(needed):
            return None
        # Second pass: write the row.
        cdef char* out = self._buffer
        cdef char* value_start
        memcpy(out, row, 2)
        out += 2
        offset = 2
        for position in range(count):
            way = ways[position] if position < columns else _KEEP
            if row[offset] & 0x80:
                if way == _CONSTANT_AND_NULL:
                    constant = self._constants[position]
                    memcpy(out, PyBytes_AS_STRING(constant), PyBytes_GET_SIZE(constant))
                    out += PyBytes_GET_SIZE(constant)
                    self._counts[position] += 1
                else:
                    memcpy(out, row + offset, 4)
                    out += 4
                offset += 4
                continue
            length = (row[offset] << 24) | (row[offset + 1] << 16) | (row[offset + 2] << 8)
            length |= row[offset + 3]
            end = offset + 4 + length
            if way == _KEEP:
                memcpy(out, row + offset, end - offset)
                out += end - offset
            elif way == _CONSTANT or way == _CONSTANT_AND_NULL:
                constant = self._constants[position]
                memcpy(out, PyBytes_AS_STRING(constant), PyBytes_GET_SIZE(constant))
                out += PyBytes_GET_SIZE(constant)
                self._counts[position] += 1
            else:
                value_start = out + 4
                out = _partial(way, row + offset + 4, length, value_start)
                length = out - value_start
                value_start[-4] = (length >> 24) & 0xFF
                value_start[-3] = (length >> 16) & 0xFF
                value_start[-2] = (length >> 8) & 0xFF
                value_start[-1] = length & 0xFF
                self._counts[position] += 1
            offset = end
        return PyBytes_FromStringAndSize(self._buffer, out - self._buffer)


cdef inline char* _partial(
    unsigned char way, const unsigned char* value, Py_ssize_t size, char* out
) noexcept:
    if way == _PARTIAL_EMAIL:
        return _email(value, size, out)
    if way == _PARTIAL_PHONE:
        return _phone(value, size, out)
    if way == _PARTIAL_IBAN:
        return _iban(value, size, out)
    if way == _PARTIAL_NAME:
        return _name(value, size, out)
    if way == _PARTIAL_CARD:
        return _card(value, size, out)
    return _other(value, size, out)


def partial_text(str category, bytes value):
    """One value's partial form, as the fast path makes it; None for a value it leaves to
    the general path (not plain ASCII). For the property test that holds it to
    values.partial."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(value)
    if not _plain_ascii(<const unsigned char*>PyBytes_AS_STRING(value), size):
        return None
    cdef unsigned char way = PARTIAL_CATEGORIES.get(category, _PARTIAL_OTHER)
    cdef char* out = <char*>malloc(_partial_bound(size))
    if out == NULL:
        raise MemoryError()
    cdef char* end = _partial(way, <const unsigned char*>PyBytes_AS_STRING(value), size, out)
    try:
        return PyBytes_FromStringAndSize(out, end - out)
    finally:
        free(out)
