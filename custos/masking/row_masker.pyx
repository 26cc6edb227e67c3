# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The masked-row fast path: a DataRow's masked columns rewritten in C, on its bytes.

The rewriter (rewriter.py) plans each result column once; where every masked column of a
result is a text type masked in part (`partial`), by keyed pseudonym (`pseudonym`), or by
one constant (`redact`, `null`, a computed column's placeholder), its rows come here
instead of being split into Python values. Each value is read and written as bytes, with
no object made per value, and a pseudonym's HMAC-SHA-256 runs on the CPU's SHA extensions
where it has them (sha256_block.h): this is what brings a masked read within a few times
a direct one.

It does exactly what values.partial and Masker.pseudonym do, byte for byte (property
tests hold them to each other), for values of plain ASCII. A row holding any other value,
or not well formed, is handed back (None) to the rewriter's general path, which masks it
or reports the malformed row: nothing is passed on unmasked.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy


cdef extern from "sha256_block.h":
    ctypedef void (*custos_sha256_compress_fn)(uint32_t* state, const uint8_t* block)
    void custos_hmac_states(
        custos_sha256_compress_fn compress, const uint8_t* key_block, uint32_t* inner,
        uint32_t* outer
    )
    void custos_hmac_sha256(
        custos_sha256_compress_fn compress, const uint32_t* inner, const uint32_t* outer,
        const uint8_t* prefix, size_t prefix_size, const uint8_t* data, size_t size,
        uint8_t* out
    )
    ctypedef void (*custos_sha256_pair_fn)(
        uint32_t* first, const uint8_t* first_block, uint32_t* second,
        const uint8_t* second_block
    )
    ctypedef struct custos_sha256_engine:
        custos_sha256_compress_fn one
        custos_sha256_pair_fn pair
    custos_sha256_engine custos_sha256_engine_for(int portable_only)
    void custos_hmac_sha256_pair(
        custos_sha256_compress_fn compress, custos_sha256_pair_fn compress_pair,
        const uint32_t* inner, const uint32_t* outer, const uint8_t** prefixes,
        const size_t* prefix_sizes, const uint8_t** datas, const size_t* sizes, uint8_t** outs
    )
    void custos_sha256(
        custos_sha256_compress_fn compress, const uint8_t* prefix, size_t prefix_size,
        const uint8_t* data, size_t size, uint8_t* out
    )


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
    _PSEUDONYM_EMAIL = 9
    _PSEUDONYM_PHONE = 10
    _PSEUDONYM_IBAN = 11
    _PSEUDONYM_NAME = 12
    _PSEUDONYM_OTHER = 13

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
PSEUDONYM_OTHER = _PSEUDONYM_OTHER
PSEUDONYM_CATEGORIES = {
    "email": _PSEUDONYM_EMAIL,
    "phone": _PSEUDONYM_PHONE,
    "iban": _PSEUDONYM_IBAN,
    "name": _PSEUDONYM_NAME,
}
"""The categories whose pseudonym has a format of its own; others get PSEUDONYM_OTHER's."""

# The longest a masked text is, for a value of n bytes. Partial: a name's initials (2 a
# letter, 1 a space between) for n one-letter words, `***@` before an email's domain, `***`
# for a short value. Pseudonym: a phone number's n, an email's 25, a name's 39, an IBAN's
# 42 (34 characters in fours), any other's 18.
cdef inline Py_ssize_t _masked_bound(Py_ssize_t size) noexcept:
    return 2 * size + 64


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


# Pseudonyms, as Masker.pseudonym makes them from the value's keyed material (32 bytes).

cdef const char* _HEX = b"0123456789abcdef"
cdef const char* _CONSONANTS = b"bcdfghjklmnprstvz"
cdef const char* _VOWELS = b"aeiou"
cdef const char* _EMAIL_DOMAIN = b".example"


cdef inline char* _hex(const uint8_t* material, Py_ssize_t start, Py_ssize_t stop, char* out) noexcept:
    # Characters start to stop of the material's hex form.
    cdef Py_ssize_t i
    for i in range(start, stop):
        out[0] = _HEX[(material[i // 2] >> (0 if i % 2 else 4)) & 15]
        out += 1
    return out


cdef const char* _PAIRS = (
    b"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    b"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    b"8081828384858687888990919293949596979899"
)


cdef Py_ssize_t _decimal_after_first(const uint8_t* number, char* out) noexcept:
    # str(int.from_bytes(number[:32], "big"))[1:] into out (at most 77 digits); its length.
    cdef uint32_t limbs[8]
    cdef uint32_t chunks[9]  # the number in base 10**9, least significant first
    cdef char digits[81]
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t first = 0  # the first limb not yet zero
    cdef Py_ssize_t i, at
    cdef uint64_t remainder
    cdef uint32_t chunk, pair
    for i in range(8):
        limbs[i] = (
            (<uint32_t>number[4 * i] << 24) | (<uint32_t>number[4 * i + 1] << 16)
            | (<uint32_t>number[4 * i + 2] << 8) | <uint32_t>number[4 * i + 3]
        )
    while first < 8 and limbs[first] == 0:
        first += 1
    while first < 8:
        remainder = 0
        for i in range(first, 8):  # divided by 10**9, the limbs that are left
            remainder = (remainder << 32) | limbs[i]
            limbs[i] = <uint32_t>(remainder // 1000000000)
            remainder -= <uint64_t>limbs[i] * 1000000000
        chunks[count] = <uint32_t>remainder
        count += 1
        while first < 8 and limbs[first] == 0:
            first += 1
    if count == 0:
        return 0  # "0": nothing after its first digit
    at = 0
    for i in range(count - 1, -1, -1):
        chunk = chunks[i]
        for pair in range(4):  # nine digits, two by two from the right, then the first
            digits[at + 7 - 2 * pair] = _PAIRS[2 * (chunk % 100)]
            digits[at + 8 - 2 * pair] = _PAIRS[2 * (chunk % 100) + 1]
            chunk = chunk // 100
        digits[at] = <char>(48 + chunk)
        at += 9
    i = 0
    while digits[i] == 48:  # the leading zeros of the most significant chunk
        i += 1
    memcpy(out, digits + i + 1, at - i - 1)
    return at - i - 1


cdef struct _DigitSource:
    # A pseudonym's digits (values._Drawn.digits), made as they are taken: the material's
    # decimal form after its first digit, then on from SHA-256 of the material and how many
    # digits came before.
    custos_sha256_compress_fn compress
    const uint8_t* material
    char chunk[80]
    Py_ssize_t size
    Py_ssize_t taken
    uint64_t produced


cdef inline void _digits_from(
    _DigitSource* source, const uint8_t* material, custos_sha256_compress_fn compress
) noexcept:
    source.compress = compress
    source.material = material
    source.size = _decimal_after_first(material, source.chunk)
    source.taken = 0
    source.produced = source.size


cdef char _next_digit(_DigitSource* source) noexcept:
    cdef uint8_t counter[8]
    cdef uint8_t more[32]
    cdef int i
    while source.taken == source.size:
        for i in range(8):
            counter[i] = (source.produced >> (56 - 8 * i)) & 0xFF
        custos_sha256(source.compress, source.material, 32, counter, 8, more)
        source.size = _decimal_after_first(more, source.chunk)
        source.taken = 0
        source.produced += source.size
    source.taken += 1
    return source.chunk[source.taken - 1]


cdef inline char* _email_pseudonym(const uint8_t* material, char* out) noexcept:
    out = _hex(material, 0, 10, out)
    out[0] = 64  # '@'
    out = _hex(material, 10, 16, out + 1)
    memcpy(out, _EMAIL_DOMAIN, 8)
    return out + 8


cdef inline char* _other_pseudonym(const uint8_t* material, char* out) noexcept:
    out[0] = 112  # 'p'
    out[1] = 95  # '_'
    return _hex(material, 0, 16, out + 2)


cdef inline bint _is_phone_layout(unsigned char byte) noexcept:
    # ' ', '(', ')', '-', '.', '/'
    return byte == 32 or byte == 40 or byte == 41 or (45 <= byte <= 47)


cdef char* _phone_pseudonym(
    const unsigned char* value, Py_ssize_t size, const uint8_t* material,
    custos_sha256_compress_fn compress, char* out
) noexcept:
    # The country code and the layout kept; every other character a drawn digit.
    cdef Py_ssize_t kept = _country_code_end(value, size)
    cdef Py_ssize_t i
    cdef _DigitSource digits
    _digits_from(&digits, material, compress)
    memcpy(out, value, kept)
    for i in range(kept, size):
        out[i] = value[i] if _is_phone_layout(value[i]) else _next_digit(&digits)
    return out + size


cdef inline bint _is_upper(unsigned char byte) noexcept:
    return 65 <= byte <= 90


cdef inline int _iban_step(int remainder, char character) noexcept:
    # ISO 13616's mod-97, one character on: a digit as itself, a letter as 10 to 35.
    if character <= 57:
        return (remainder * 10 + character - 48) % 97
    return (remainder * 100 + character - 55) % 97


cdef char* _iban_pseudonym(
    const unsigned char* value, Py_ssize_t size, const uint8_t* material,
    custos_sha256_compress_fn compress, char* out
) noexcept:
    # The country kept, the account drawn digit for digit and letter for letter, the check
    # digits computed; spaced in fours where the value had spaces. Not an IBAN's form: as
    # any other pseudonym.
    cdef char compact[34]
    cdef char masked[34]
    cdef Py_ssize_t length = 0
    cdef Py_ssize_t i
    cdef Py_ssize_t letters = 0
    cdef bint spaced = False
    cdef unsigned char character
    cdef int remainder = 0
    cdef _DigitSource digits
    for i in range(size):
        character = value[i]
        if character == 32:
            spaced = True
            continue
        if length == 34:
            return _other_pseudonym(material, out)
        compact[length] = character - 32 if 97 <= character <= 122 else character
        length += 1
    if (
        length < 12
        or not (_is_upper(compact[0]) and _is_upper(compact[1]))
        or not (_is_digit(compact[2]) and _is_digit(compact[3]))
    ):
        return _other_pseudonym(material, out)
    for i in range(4, length):
        if not (_is_digit(compact[i]) or _is_upper(compact[i])):
            return _other_pseudonym(material, out)
    _digits_from(&digits, material, compress)
    masked[0] = compact[0]
    masked[1] = compact[1]
    for i in range(4, length):
        if _is_digit(compact[i]):
            masked[i] = _next_digit(&digits)
        else:
            masked[i] = <char>(65 + material[letters] % 26)
            letters += 1
        remainder = _iban_step(remainder, masked[i])
    remainder = _iban_step(_iban_step(remainder, compact[0]), compact[1])
    remainder = _iban_step(_iban_step(remainder, 48), 48)  # the check digits as "00"
    masked[2] = <char>(48 + (98 - remainder) // 10)
    masked[3] = <char>(48 + (98 - remainder) % 10)
    if not spaced:
        memcpy(out, masked, length)
        return out + length
    for i in range(length):
        if i and i % 4 == 0:
            out[0] = 32
            out += 1
        out[0] = masked[i]
        out += 1
    return out


cdef char* _name_pseudonym(
    const unsigned char* value, Py_ssize_t size, const uint8_t* material, char* out
) noexcept:
    # As many made-up words as the name has (at most eight): each two drawn syllables.
    cdef Py_ssize_t words = 0
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t word, half
    cdef uint8_t byte
    while i < size:  # words as values._WORD finds them: letters, joined by ' or -
        if not _is_letter(value[i]):
            i += 1
            continue
        while i < size and _is_letter(value[i]):
            i += 1
        while i + 1 < size and (value[i] == 39 or value[i] == 45) and _is_letter(value[i + 1]):
            i += 1
            while i < size and _is_letter(value[i]):
                i += 1
        words += 1
    words = 1 if words == 0 else min(words, 8)
    for word in range(words):
        if word:
            out[0] = 32
            out += 1
        for half in range(2):
            byte = material[2 * word + half]
            out[2 * half] = _CONSONANTS[byte % 17]
            out[2 * half + 1] = _VOWELS[(byte >> 5) % 5]
        out[0] -= 32  # capitalised
        out += 4
    return out


cdef class RowMasker:
    """Masks the rows of one result. `ways` holds a code a column; `constants` the value
    (with its length word) of each column masked by a constant, `categories` the category
    (its name and a NUL, as HMAC reads it) of each pseudonymised column, b"" for others;
    `key_block` the masking key as HMAC pads it, for pseudonyms. Counts each column's
    masked values until taken."""

    cdef bytes _ways
    cdef tuple _constants
    cdef tuple _categories
    cdef Py_ssize_t _columns
    cdef long long* _counts
    cdef char* _buffer
    cdef Py_ssize_t _capacity
    cdef custos_sha256_engine _sha256
    cdef uint32_t _inner[8]
    cdef uint32_t _outer[8]
    # A row's values to pseudonymise, in order, and their keyed material: HMACs are made
    # for the whole row first, two at a time, which takes little longer than one.
    cdef const uint8_t** _keyed_prefixes
    cdef size_t* _keyed_prefix_sizes
    cdef const uint8_t** _keyed_values
    cdef size_t* _keyed_sizes
    cdef uint8_t** _materials

    def __cinit__(
        self,
        bytes ways not None,
        tuple constants not None,
        tuple categories not None,
        bytes key_block=None,
        bint portable=False,
    ):
        if len(constants) != len(ways) or len(categories) != len(ways):
            raise ValueError("one constant and one category a column, b'' where none is used")
        if not all(type(given) is bytes for given in constants + categories):
            raise TypeError("the constants and categories are bytes")
        if key_block is not None and len(key_block) != 64:
            raise ValueError("the key block is the key padded to SHA-256's 64 bytes")
        self._ways = ways
        self._constants = constants
        self._categories = categories
        self._columns = len(ways)
        self._buffer = NULL
        self._capacity = 0
        cdef Py_ssize_t slots = max(self._columns, 1)
        self._counts = <long long*>malloc(slots * sizeof(long long))
        self._keyed_prefixes = <const uint8_t**>malloc(slots * sizeof(uint8_t*))
        self._keyed_prefix_sizes = <size_t*>malloc(slots * sizeof(size_t))
        self._keyed_values = <const uint8_t**>malloc(slots * sizeof(uint8_t*))
        self._keyed_sizes = <size_t*>malloc(slots * sizeof(size_t))
        self._materials = <uint8_t**>malloc(slots * sizeof(uint8_t*))
        if (
            self._counts == NULL or self._keyed_prefixes == NULL
            or self._keyed_prefix_sizes == NULL or self._keyed_values == NULL
            or self._keyed_sizes == NULL or self._materials == NULL
        ):
            raise MemoryError()
        self._materials[0] = <uint8_t*>malloc(slots * 32)
        if self._materials[0] == NULL:
            raise MemoryError()
        cdef Py_ssize_t position
        for position in range(self._columns):
            self._counts[position] = 0
            self._materials[position] = self._materials[0] + 32 * position
            if ways[position] >= _PSEUDONYM_EMAIL and key_block is None:
                raise ValueError("pseudonyms need the masking key")
        self._sha256 = custos_sha256_engine_for(portable)
        if key_block is not None:
            custos_hmac_states(
                self._sha256.one, <const uint8_t*>PyBytes_AS_STRING(key_block), self._inner,
                self._outer
            )

    def __dealloc__(self):
        free(self._counts)
        free(self._buffer)
        free(self._keyed_prefixes)
        free(self._keyed_prefix_sizes)
        free(self._keyed_values)
        free(self._keyed_sizes)
        if self._materials != NULL:
            free(self._materials[0])
        free(self._materials)

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

    cdef void _keyed(self, Py_ssize_t keyed) noexcept:
        # The keyed material of the row's first `keyed` values to pseudonymise, two by two.
        cdef Py_ssize_t first
        for first in range(0, keyed - 1, 2):
            custos_hmac_sha256_pair(
                self._sha256.one, self._sha256.pair, self._inner, self._outer,
                self._keyed_prefixes + first, self._keyed_prefix_sizes + first,
                self._keyed_values + first, self._keyed_sizes + first, self._materials + first
            )
        if keyed % 2:
            first = keyed - 1
            custos_hmac_sha256(
                self._sha256.one, self._inner, self._outer, self._keyed_prefixes[first],
                self._keyed_prefix_sizes[first], self._keyed_values[first],
                self._keyed_sizes[first], self._materials[first]
            )

    def masked_row(self, bytes body not None):
        """The DataRow body with its masked columns rewritten; None where the row is not one
        this path masks (a value not plain ASCII, a malformed row): the general path then
        takes it, and nothing of it has been counted."""
        cdef const unsigned char* row = <const unsigned char*>PyBytes_AS_STRING(body)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
        cdef const unsigned char* ways = <const unsigned char*>PyBytes_AS_STRING(self._ways)
        cdef Py_ssize_t columns = self._columns
        cdef Py_ssize_t count, position, offset, length, end, needed
        cdef Py_ssize_t keyed = 0
        cdef unsigned char way
        cdef bytes constant
        cdef bytes category
        if size < 2:
            return None
        count = (row[0] << 8) | row[1]
        # First pass: check the row, bound what it becomes and find the values to
        # pseudonymise, before writing or counting.
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
                needed += _masked_bound(length)
                if way >= _PSEUDONYM_EMAIL:
                    category = self._categories[position]
                    self._keyed_prefixes[keyed] = <const uint8_t*>PyBytes_AS_STRING(category)
                    self._keyed_prefix_sizes[keyed] = PyBytes_GET_SIZE(category)
                    self._keyed_values[keyed] = row + offset + 4
                    self._keyed_sizes[keyed] = length
                    keyed += 1
            offset = end
        if offset != size or not self._reserve(needed):
            return None
        self._keyed(keyed)
        # Second pass: write the row.
        cdef char* out = self._buffer
        cdef char* value_start
        cdef char* length_word
        keyed = 0
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
                length_word = out
                value_start = out + 4
                if way < _PSEUDONYM_EMAIL:
                    out = _partial(way, row + offset + 4, length, value_start)
                else:
                    out = _pseudonym(
                        way, row + offset + 4, length, self._materials[keyed], self._sha256.one,
                        value_start
                    )
                    keyed += 1
                length = out - value_start
                length_word[0] = (length >> 24) & 0xFF
                length_word[1] = (length >> 16) & 0xFF
                length_word[2] = (length >> 8) & 0xFF
                length_word[3] = length & 0xFF
                self._counts[position] += 1
            offset = end
        return PyBytes_FromStringAndSize(self._buffer, out - self._buffer)


cdef inline char* _pseudonym(
    unsigned char way, const unsigned char* value, Py_ssize_t size, const uint8_t* material,
    custos_sha256_compress_fn compress, char* out
) noexcept:
    if way == _PSEUDONYM_EMAIL:
        return _email_pseudonym(material, out)
    if way == _PSEUDONYM_PHONE:
        return _phone_pseudonym(value, size, material, compress, out)
    if way == _PSEUDONYM_IBAN:
        return _iban_pseudonym(value, size, material, compress, out)
    if way == _PSEUDONYM_NAME:
        return _name_pseudonym(value, size, material, out)
    return _other_pseudonym(material, out)


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


def masked_text(
    unsigned char way, bytes value, bytes category=b"", bytes key_block=None, bint portable=False
):
    """One value masked as the fast path masks it (a way of PARTIAL_CATEGORIES or
    PSEUDONYM_CATEGORIES); None for a value it leaves to the general path (not plain
    ASCII). For the property tests that hold it to values.py."""
    masker = RowMasker(bytes([way]), (b"",), (category,), key_block, portable)
    row = masker.masked_row(b"\x00\x01" + len(value).to_bytes(4, "big") + value)
    return None if row is None else row[6:]


def sha256_digest(bytes data, bint portable=False):
    """SHA-256 of the data by the fast path's own compression (the CPU's SHA extensions,
    or with `portable` the portable C): for the tests that hold it to hashlib."""
    cdef uint8_t digest[32]
    custos_sha256(
        custos_sha256_engine_for(portable).one, NULL, 0,
        <const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), digest
    )
    return PyBytes_FromStringAndSize(<char*>digest, 32)
