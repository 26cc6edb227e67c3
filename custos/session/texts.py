"""Statement texts to analyses, once per schema an unqualified name may resolve to.

The gateway does not know which schema of the search path holds which table, so a text is
analysed once per candidate schema and decided as reading each: that never lets a statement
through that PostgreSQL would resolve to a protected table.

Analysis runs on the gateway's event loop only while it is short. Every session waits
while the loop is busy, so a long text, or one whose analysis outlasts a few milliseconds,
is analysed in a worker process instead (custos/sql/workers.py) and its session waits for
it alone.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Final, Protocol

from custos.session.statement import Candidates
from custos.sql.analysis import too_complex, under_each_schema
from custos.sql.cache import AnalysisCache
from custos.sql.facts import Analysis

INLINE_CHARS: Final = 8 << 10
"""Longer texts are analysed in a worker (unless their analysis is held): parsing one takes
about a millisecond per kilobyte, during which the event loop cannot be handed back."""

INLINE_SECONDS: Final = 0.01
"""How long an analysis may hold the event loop before it is handed to a worker instead."""


class AnalysisWorkers(Protocol):
    """Analyses off the event loop: a text's analysis under each schema, within the budget."""

    def analyse(self, sql: str, schemas: tuple[str, ...]) -> Awaitable[tuple[Analysis, ...]]: ...


class TextAnalyser:
    __slots__ = ("_cache", "_exact_texts", "_workers")

    def __init__(
        self, cache: AnalysisCache, exact_texts: bool, workers: AnalysisWorkers | None = None
    ) -> None:
        self._cache = cache
        # A stage that reads a statement's own text (the Lambda decision point sends it) needs
        # an analysis of that very text. Otherwise a text of a known shape takes the analysis
        # of the first text of that shape, which every stage decides and follows alike, and
        # none is built for it.
        self._exact_texts = exact_texts
        self._workers = workers

    def candidates(
        self, sql: str, schemas: tuple[str, ...]
    ) -> Candidates | Awaitable[tuple[Analysis, ...]]:
        """The text's candidates; or, where its analysis could hold the event loop, the
        workers' analyses to wait for, which kept() then turns into candidates."""
        full = self._cache.budget_seconds
        workers = self._workers
        if workers is not None and len(sql) > INLINE_CHARS and not self._held(sql, schemas):
            return workers.analyse(sql, schemas)
        seconds = full if workers is None else min(INLINE_SECONDS, full)
        inline = self._inline(sql, schemas, seconds)
        if inline is not None:
            return inline
        if workers is not None and seconds < full:
            return workers.analyse(sql, schemas)
        # Kept: the same text sent again is refused without spending the budget again.
        return self.kept(sql, schemas, (too_complex(full),))

    def kept(
        self, sql: str, schemas: tuple[str, ...], analyses: tuple[Analysis, ...]
    ) -> Candidates:
        """The candidates of analyses a worker made, held for the text from now on."""
        for schema, analysis in zip(schemas, analyses, strict=False):
            self._cache.keep(sql, (schema,), analysis)
        return _as_candidates(schemas, analyses)

    def _held(self, sql: str, schemas: tuple[str, ...]) -> bool:
        holds = self._cache.holds_text
        return all(holds(sql, (schema,)) for schema in schemas)

    def _inline(self, sql: str, schemas: tuple[str, ...], seconds: float) -> Candidates | None:
        if len(schemas) == 1:  # the common case, kept short: most texts are held already
            analysis = self._analysis(sql, schemas, seconds)
            return None if analysis is None else ((analysis, schemas),)
        analyses = under_each_schema(sql, schemas, seconds, self._analysis)
        return None if analyses is None else _as_candidates(schemas, analyses)

    def _analysis(self, sql: str, path: tuple[str, ...], seconds: float) -> Analysis | None:
        if not self._exact_texts:
            alike = self._cache.decided_alike(sql, path)
            if alike is not None:
                return alike
        return self._cache.analyze_within(sql, path, seconds)


def _as_candidates(schemas: tuple[str, ...], analyses: tuple[Analysis, ...]) -> Candidates:
    """One candidate per schema; a single one, the first schema's, for a refused text."""
    if len(analyses) != len(schemas):
        return _refused(analyses[0], schemas)
    return tuple((analysis, (schema,)) for analysis, schema in zip(analyses, schemas, strict=True))


def _refused(analysis: Analysis, schemas: tuple[str, ...]) -> Candidates:
    return ((analysis, schemas[:1]),)
