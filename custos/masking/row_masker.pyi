# The types of the compiled masked-row fast path (row_masker.pyx).

KEEP: int
CONSTANT: int
CONSTANT_AND_NULL: int
PARTIAL_OTHER: int
PARTIAL_CATEGORIES: dict[str, int]
PSEUDONYM_OTHER: int
PSEUDONYM_CATEGORIES: dict[str, int]

class RowMasker:
    def __init__(
        self,
        ways: bytes,
        constants: tuple[bytes, ...],
        categories: tuple[bytes, ...],
        key_block: bytes | None = None,
        portable: bool = False,
    ) -> None: ...
    def take_counts(self) -> list[int]: ...
    def masked_row(self, body: bytes) -> bytes | None: ...

def masked_text(
    way: int,
    value: bytes,
    category: bytes = b"",
    key_block: bytes | None = None,
    portable: bool = False,
) -> bytes | None: ...
def sha256_digest(data: bytes, portable: bool = False) -> bytes: ...
