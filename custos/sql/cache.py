"""A least-recently-used cache of analyses, keyed by the text and the search path.

One per process, shared by sessions on one event loop (not thread-safe). The analyses it hands
out are shared: treat them as read-only. Memory is bounded by entries and by an estimate of
the bytes the analyses hold (estimated_bytes), so a few huge statements cannot crowd the
process: one that would take more than a sixty-fourth of the budget is not kept at all.

Clients in the simple protocol send literals inside the text (`... WHERE id = 4711`), so
the same statement arrives as ever new texts. The cache also keys each single statement by
its *shape*, the text with its literals blanked out (shapes.py), and hands a new text of a
known shape the facts drawn from the first one. That is sound because the analysis reads
literal values only through `literals.constant`, which records which ones it read: a new text
is matched only if it agrees with the first on every literal the analysis read (a LIMIT count,
a LIKE pattern, a constant condition, a SET value), and only its statement text is its own.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from custos.sql import budget
from custos.sql.analysis import analyze_within, too_complex
from custos.sql.facts import Analysis, analysis_bytes
from custos.sql.literals import recording_consumed_literals
from custos.sql.shapes import (
    MAX_SHAPED_CHARS,
    Shape,
    shape_of,
    template_key,
    template_pattern,
)

Key = tuple[str, tuple[str, ...]]
_TemplateAt = tuple[bytes, tuple[str, ...]]  # a text's template key, and the search path


@dataclass(frozen=True, slots=True)
class _Shaped:
    analysis: Analysis
    literals: tuple[str, ...]
    consumed: tuple[int, ...]  # indices of the literals whose values the analysis read
    prefix: int  # characters before the statement's own text
    suffix: int  # characters after it


class AnalysisCache:
    def __init__(
        self,
        max_entries: int = 10_000,
        max_total_bytes: int = 64 << 20,
        budget_seconds: float = budget.DEFAULT_SECONDS,
        max_statement_chars: int = budget.MAX_STATEMENT_CHARS,
    ) -> None:
        self.max_entries = max_entries
        self.max_total_bytes = max_total_bytes
        self.budget_seconds = budget_seconds  # for one analysis (see sql/budget.py)
        self.max_statement_chars = max_statement_chars
        self.hits = 0
        self.shape_hits = 0
        self.misses = 0
        self._entries: OrderedDict[Key, Analysis] = OrderedDict()
        self._shapes: OrderedDict[tuple[str, tuple[str, ...]], _Shaped] = OrderedDict()
        # template key and path -> the pattern of a known plain shape, and that shape's key
        self._templates: dict[_TemplateAt, tuple[re.Pattern[str], str]] = {}
        self._weights: dict[Key, int] = {}
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def analyze(self, sql: str, search_path: Sequence[str]) -> Analysis:
        analysis = self.analyze_within(sql, search_path, self.budget_seconds)
        if analysis is None:
            # Kept: the same text sent again is refused without spending the budget again.
            analysis = too_complex(self.budget_seconds)
            self.keep(sql, search_path, analysis)
        return analysis

    def analyze_within(
        self, sql: str, search_path: Sequence[str], budget_seconds: float
    ) -> Analysis | None:
        """The text's analysis, held or made within the seconds given; None: not within."""
        path = _as_path(search_path)
        known, shape = self._lookup(sql, path)
        if isinstance(known, Analysis):
            return known
        if known is not None:
            # Not kept by its exact text: a stream of ever new texts would only churn
            # the cache and leave its garbage to the slowest generation of the collector.
            return _for_text(known, sql)
        self.misses += 1
        with recording_consumed_literals() as locations:
            analysis = analyze_within(sql, path, budget_seconds, self.max_statement_chars)
        if analysis is None:
            return None
        self._remember((sql, path), analysis)
        if shape is not None:
            self._remember_shape(shape, path, sql, analysis, locations)
        return analysis

    def holds_text(self, sql: str, search_path: Sequence[str]) -> bool:
        """Whether the analysis of this very text is held (a shape's is not looked for)."""
        return (sql, _as_path(search_path)) in self._entries

    def keep(self, sql: str, search_path: Sequence[str], analysis: Analysis) -> None:
        """Holds an analysis made elsewhere (in a worker process) for the text."""
        self._remember((sql, _as_path(search_path)), analysis)

    def decided_alike(self, sql: str, search_path: Sequence[str]) -> Analysis | None:
        """An analysis already held that decides exactly like the text's own, or None.

        The text's own when it was seen before, else its shape's: the in-process decision
        point decides by that one anyway, so a caller that needs no more than the decision
        is spared building an analysis for this text.
        """
        known, _ = self._lookup(sql, _as_path(search_path))
        return known.analysis if isinstance(known, _Shaped) else known

    def _lookup(
        self, sql: str, path: tuple[str, ...]
    ) -> tuple[Analysis | _Shaped | None, Shape | None]:
        """The text's own analysis, or its known shape's; else the shape, if it has one."""
        key = (sql, path)
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return found, None
        if len(sql) > MAX_SHAPED_CHARS or not sql.isascii():
            return None, None  # not worth shaping (see shapes.py)
        template_at = (template_key(sql), path)
        shaped = self._by_template(sql, template_at)
        if shaped is not None:
            return shaped, None
        shape = shape_of(sql)
        if shape is None:
            return None, None
        shape_key = (shape.key, path)
        shaped = self._shapes.get(shape_key)
        if shaped is None or not _agrees(shape.literals, shaped):
            return None, shape
        self.shape_hits += 1
        self._shapes.move_to_end(shape_key)
        self._remember_template(template_at, shape)
        return shaped, shape

    def _by_template(self, sql: str, template_at: _TemplateAt) -> _Shaped | None:
        """The analysis of a known plain shape, recognised without finding the literals."""
        template = self._templates.get(template_at)
        if template is None:
            return None
        pattern, shape_key = template
        match = pattern.fullmatch(sql)
        shaped = self._shapes.get((shape_key, template_at[1]))
        if match is None or shaped is None:
            return None
        if not _agrees(match.groups(), shaped):
            return None
        self.shape_hits += 1
        return shaped

    def _remember_template(self, template_at: _TemplateAt, shape: Shape) -> None:
        if template_at in self._templates:
            return  # another shape has the key; it stays with the first
        pattern = template_pattern(shape)
        if pattern is None:
            return
        self._templates[template_at] = (pattern, shape.key)
        if len(self._templates) > self.max_entries:
            del self._templates[next(iter(self._templates))]

    def _remember(self, key: Key, analysis: Analysis) -> None:
        weight = estimated_bytes(key[0], analysis)
        if weight > self.max_total_bytes // 64 or self.max_entries <= 0:
            return
        self._entries[key] = analysis
        self._weights[key] = weight
        self.total_bytes += weight
        while len(self._entries) > self.max_entries or self.total_bytes > self.max_total_bytes:
            evicted, _ = self._entries.popitem(last=False)
            self.total_bytes -= self._weights.pop(evicted)

    def _remember_shape(
        self,
        shape: Shape,
        path: tuple[str, ...],
        sql: str,
        analysis: Analysis,
        locations: list[int],
    ) -> None:
        if analysis.error is not None or len(analysis.statements) != 1:
            return
        if analysis.statements[0].copy_destination is not None:
            return  # a COPY's options are literals too, and masking reads them from its text
        index_of = {start: index for index, start in enumerate(shape.starts)}
        if any(location not in index_of for location in locations):
            return  # a value read from something the scanner does not call a literal
        text = analysis.texts[0]
        prefix = sql.find(text)
        if prefix < 0:
            return
        self._shapes[(shape.key, path)] = _Shaped(
            analysis=analysis,
            literals=shape.literals,
            consumed=tuple(sorted({index_of[location] for location in locations})),
            prefix=prefix,
            suffix=len(sql) - prefix - len(text),
        )
        if len(self._shapes) > self.max_entries:
            self._shapes.popitem(last=False)


def estimated_bytes(sql: str, analysis: Analysis) -> int:
    """About the memory an analysis holds, from what it is made of (measured with
    tracemalloc: some 300 bytes a result column, 100 an entry of lineage or of the
    columns read), for the cache's budget."""
    return 2 * len(sql) + analysis_bytes(analysis)


def _as_path(search_path: Sequence[str]) -> tuple[str, ...]:
    if isinstance(search_path, str):
        raise TypeError("search_path is a sequence of schema names, not a string")
    return tuple(search_path)


def _agrees(literals: Sequence[str], shaped: _Shaped) -> bool:
    """Whether a text agrees with its shape's first text on every literal the analysis read."""
    return not shaped.consumed or all(
        literals[index] == shaped.literals[index] for index in shaped.consumed
    )


def _for_text(shaped: _Shaped, sql: str) -> Analysis:
    # The statement's facts are the first text's; only its own text is this one's.
    canonical = shaped.analysis
    text = sql[shaped.prefix : len(sql) - shaped.suffix]
    return Analysis(
        canonical.statements,
        (text,),
        canonical=canonical,
        session_effects=canonical.session_effects,
    )
