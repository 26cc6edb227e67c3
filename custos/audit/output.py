"""How the audit commands print rows: an aligned table for people, JSON lines for tools."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any


def plain(value: Any) -> Any:
    """A value as JSON holds it: times in UTC ISO 8601, decimals as numbers."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def cell(value: Any) -> str:
    """A value as one table cell: lists joined by commas, nothing for NULL."""
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(cell(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(plain(record), ensure_ascii=False)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under their column names, each column as wide as its widest cell."""
    cells = [[cell(value) for value in row] for row in rows]
    widths = [
        max([len(name), *(len(row[index]) for row in cells)]) for index, name in enumerate(columns)
    ]
    lines = [
        "  ".join(name.ljust(width) for name, width in zip(columns, widths, strict=True)),
        "  ".join("-" * width for width in widths),
        *(
            "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True))
            for row in cells
        ),
    ]
    return "\n".join(line.rstrip() for line in lines)
