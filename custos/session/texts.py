"""Statement texts to analyses, once per schema an unqualified name may resolve to.

The gateway does not know which schema of the search path holds which table, so a text is
analysed once per candidate schema and decided as reading each: that never lets a statement
through that PostgreSQL would resolve to a protected table.
"""

from __future__ import annotations

import time

from custos.session.statement import Candidates
from custos.sql.analysis import too_complex
from custos.sql.cache import AnalysisCache
from custos.sql.facts import Analysis


class TextAnalyser:
    __slots__ = ("_cache", "_exact_texts")

    def __init__(self, cache: AnalysisCache, exact_texts: bool) -> None:
        self._cache = cache
        # A stage that reads a statement's own text (the Lambda decision point sends it) needs
        # an analysis of that very text. Otherwise a text of a known shape takes the analysis
        # of the first text of that shape, which every stage decides and follows alike, and
        # none is built for it.
        self._exact_texts = exact_texts

    def candidates(self, sql: str, schemas: tuple[str, ...]) -> Candidates:
        if len(schemas) == 1:
            return ((self._analysis(sql, schemas), schemas),)
        # One budget for them all: each analysis has its own, and a text built to take
        # nearly all of it would otherwise hold the gateway once per schema.
        seconds = self._cache.budget_seconds
        deadline = time.monotonic() + seconds
        candidates: list[tuple[Analysis, tuple[str, ...]]] = []
        for schema in schemas:
            if time.monotonic() > deadline:
                return ((too_complex(seconds), (schema,)),)
            analysis = self._analysis(sql, (schema,))
            if analysis.error is not None:
                # Refused whatever the schema: the others would only spend their budgets.
                return ((analysis, (schema,)),)
            candidates.append((analysis, (schema,)))
        return tuple(candidates)

    def _analysis(self, sql: str, path: tuple[str, ...]) -> Analysis:
        if not self._exact_texts:
            alike = self._cache.decided_alike(sql, path)
            if alike is not None:
                return alike
        return self._cache.analyze(sql, path)
