"""A least-recently-used cache of analyses, keyed by the text and the search path.

One per process, shared by sessions on one event loop (not thread-safe). The analyses it hands
out are shared: treat them as read-only. Memory is bounded by entries and by the total length
of the texts held, so a few huge statements cannot crowd the process.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from custos.sql.analysis import analyze
from custos.sql.facts import Analysis

Key = tuple[str, tuple[str, ...]]


class AnalysisCache:
    def __init__(self, max_entries: int = 10_000, max_total_chars: int = 20_000_000) -> None:
        self.max_entries = max_entries
        self.max_total_chars = max_total_chars
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Key, Analysis] = OrderedDict()
        self._total_chars = 0

    def __len__(self) -> int:
        return len(self._entries)

    def analyze(self, sql: str, search_path: Sequence[str]) -> Analysis:
        key = (sql, tuple(search_path))
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return found
        self.misses += 1
        analysis = analyze(sql, search_path)
        if len(sql) <= self.max_total_chars and self.max_entries > 0:
            self._entries[key] = analysis
            self._total_chars += len(sql)
            while len(self._entries) > self.max_entries or self._total_chars > self.max_total_chars:
                (evicted, _), _ = self._entries.popitem(last=False)
                self._total_chars -= len(evicted)
        return analysis
