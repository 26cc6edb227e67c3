# The types of the compiled masked-row fast path (row_masker.pyx).

KEEP: int
CONSTANT: int
CONSTANT_AND_NULL: int
PARTIAL_OTHER: int
PARTIAL_CATEGORIES: dict[str, int]

class RowMasker:
    def __init__(self, ways: bytes, constants: tuple[bytes, ...]) -> None: ...
    def take_counts(self) -> list[int]: ...
    def masked_row(self, body: bytes) -> bytes | None: ...

def partial_text(category: str, value: bytes) -> bytes | None: ...
