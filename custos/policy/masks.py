"""Which result columns a masked statement's rewriter masks, and how.

Each result column carries its lineage: the base columns its values may come from, through
aliases, expressions, subqueries, views and set operations (custos/sql/walker.py). A column
is masked when any of them holds a category a mask rule of the decision names, by that
rule's method; where several rules apply, the strongest method wins (null, then redact,
then a pseudonym, then generalise, then partial). A column of unknown width (`*` over a
relation whose columns were not read) stands for an unknown number of columns: every
column from its place on is masked when any of them, or any column after it, would be.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from custos.policy.catalog import FREE_TEXT, PersonalDataCatalog, by_relation
from custos.policy.models import MaskMethod
from custos.sql.facts import JsonShape, OutputColumn

# Generalise sits between a pseudonym and partial: like partial it shows something of the
# value itself (a birth date's year, an amount's range), which a pseudonym never does; but
# less than partial does (it keeps no part of an email or a name), and many values share
# one generalisation, where a pseudonym singles each value out only to the key's holder.
STRENGTH = {
    MaskMethod.NULL: 4,
    MaskMethod.REDACT: 3,
    MaskMethod.PSEUDONYM: 2,
    MaskMethod.HASH: 2,
    MaskMethod.GENERALISE: 1,
    MaskMethod.PARTIAL: 0,
}

PARTIAL_FORMS = frozenset({"email", "phone", "iban", "name"})
"""The categories whose partial form keeps a part that identifies no one on its own (see
custos/masking/values.py); partial masks any other redact."""

MIXED = "mixed"
"""The category of a column whose values may be of several masked categories."""


@dataclass(frozen=True, slots=True)
class KeyMask:
    """One key of a JSON object to mask: what its value holds, how. `computed`: the
    statement computed the value, so its form, even whether it is null, may say something
    of the columns it comes from: every value becomes one placeholder."""

    key: str
    category: str
    method: MaskMethod
    computed: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "category": self.category,
            "method": self.method.value,
            "computed": self.computed,
        }


@dataclass(frozen=True, slots=True)
class JsonMask:
    """How to mask a JSON object (or an array of them) a column builds, keeping its
    structure: the keys to mask, and the keys it must have to be the object the analysis
    traced. `exact`: it has exactly those keys (built from named columns); else at least
    them (a table's row: its other keys are its columns no catalog entry names)."""

    masked: tuple[KeyMask, ...]
    keys: tuple[str, ...]
    exact: bool
    aggregated: bool  # an array of such objects (json_agg)

    def as_dict(self) -> dict[str, object]:
        return {
            "masked": [mask.as_dict() for mask in self.masked],
            "keys": list(self.keys),
            "exact": self.exact,
            "aggregated": self.aggregated,
        }


@dataclass(frozen=True, slots=True)
class ColumnMask:
    """One result column to mask: by position (from 0), its name, what it holds, how.
    With `json`, a JSON value whose personal keys alone are masked, by their own methods
    (`method` then masks the whole value where it is not the object traced). `computed`:
    the statement computes its values (or which column holds what is not known), so their
    form, even whether they are NULL, may carry something of the columns they come from
    (an array's bounds, a number's scale, NULL for some rows): every value, NULL too,
    becomes one placeholder of the column's type, whatever the method."""

    position: int
    name: str | None  # None: every column from `position` on (a `*` of unknown width)
    category: str
    method: MaskMethod
    rule: str
    json: JsonMask | None = None
    computed: bool = False

    def as_dict(self) -> dict[str, object]:
        shown: dict[str, object] = {
            "position": self.position,
            "name": self.name,
            "category": self.category,
            "method": self.method.value,
            "rule": self.rule,
        }
        if self.json is not None:
            shown["json"] = self.json.as_dict()
        if self.computed:
            shown["computed"] = True
        return shown


class MaskRule(Protocol):
    """A mask rule of a decision (engine.MaskSpec): its categories and method."""

    @property
    def rule(self) -> str: ...

    @property
    def categories(self) -> frozenset[str]: ...

    @property
    def method(self) -> MaskMethod: ...


def column_masks(
    outputs: Iterable[OutputColumn],
    catalog: PersonalDataCatalog,
    rules: Iterable[MaskRule],
    function_reads: Iterable[tuple[str, str]] = (),
    reads_statistics: bool = False,
    tested: Iterable[tuple[str, str]] = (),
) -> tuple[ColumnMask, ...]:
    """The result columns to mask, in order. `function_reads`: what the bodies of the
    functions the statement calls read; where that holds a masked category, its values
    may come out of any column untraced, and every column is masked. So with
    `reads_statistics`: the planner's statistics hold sample values of every column. And
    with `tested`, the columns the statement searches, compares (with anything), ranks,
    groups or makes distinct: the rows that match carry their values in any other column
    (`chr(n)` where `ascii(substr(name, p, 1)) = n`; `x.g` joined on `phone = x.g`)."""
    rules = tuple(rules)
    if reads_statistics and rules:
        return (_every_column(rules),)
    held_by_functions = catalog.categories(by_relation((*function_reads, *tested)))
    applying = [rule for rule in rules if not rule.categories.isdisjoint(held_by_functions)]
    if applying:
        return (_every_column(applying),)
    masks: list[ColumnMask] = []
    unknown_from: int | None = None  # where a column of unknown width puts the rest
    for position, output in enumerate(outputs):
        if output.name is None and unknown_from is None:
            unknown_from = position
        found = _mask_of(output.sources, output.computed, catalog, rules)
        if found is None:
            continue
        category, method, rule = found
        shape = None if output.json is None else _json_mask(output.json, catalog, rules)
        masks.append(
            ColumnMask(position, output.name, category, method, rule, shape, output.computed)
        )
    if unknown_from is None:
        return tuple(masks)
    # After a column of unknown width no position is known: every column from it on is
    # masked, by the strongest method of those that would be.
    placed = [mask for mask in masks if mask.position < unknown_from]
    rest = [mask for mask in masks if mask.position >= unknown_from]
    if not rest:
        return tuple(placed)
    strongest_rest = max(rest, key=lambda mask: STRENGTH[mask.method])
    categories = {mask.category for mask in rest}
    category = categories.pop() if len(categories) == 1 else MIXED
    method = whole_value_method(strongest_rest.method)
    computed = any(mask.computed for mask in rest)
    fallback = ColumnMask(unknown_from, None, category, method, strongest_rest.rule, None, computed)
    return (*placed, fallback)


def _every_column(rules: Sequence[MaskRule]) -> ColumnMask:
    """Every column masked whole by the strongest of the rules: which holds what is not
    known, and the statement may have computed any of them."""
    strongest = max(rules, key=lambda rule: STRENGTH[rule.method])
    method = whole_value_method(strongest.method)
    return ColumnMask(0, None, MIXED, method, strongest.rule, computed=True)


def _mask_of(
    lineage: Iterable[tuple[str, str]],
    computed: bool,
    catalog: PersonalDataCatalog,
    rules: tuple[MaskRule, ...],
) -> tuple[str, MaskMethod, str] | None:
    """How a value of this lineage is masked (category, method, rule), or None."""
    sources = by_relation(lineage)
    held = catalog.categories(sources)
    applying = [rule for rule in rules if not rule.categories.isdisjoint(held)]
    if not applying:
        return None
    strongest = max(applying, key=lambda rule: STRENGTH[rule.method])
    masked = sorted(held & frozenset().union(*(rule.categories for rule in applying)))
    category = masked[0] if len(masked) == 1 else MIXED
    if not computed and catalog.categories(sources, quoted=False) == {FREE_TEXT}:
        # Free text as it is: the values it quotes are found and masked in place
        # (custos/masking/detect.py). Cut up, they would no longer be found.
        category = FREE_TEXT
    method = strongest.method
    if method is MaskMethod.PARTIAL and (computed or category not in PARTIAL_FORMS | {FREE_TEXT}):
        # A part kept of a value the statement computed can be any part of the column
        # (`'x@' || replace(email, '@', '#')` keeps it all after the last @), and a
        # value of no known format has no part that identifies no one: redacted.
        method = MaskMethod.REDACT
    return category, method, strongest.rule


def _json_mask(
    shape: JsonShape, catalog: PersonalDataCatalog, rules: tuple[MaskRule, ...]
) -> JsonMask | None:
    """The keys of a JSON object to mask, each by its own lineage."""
    if shape.keys_of is None:
        fields = shape.fields
        exact = True
    else:
        # A table's row: its catalogued columns are the keys that may be personal.
        table = catalog.table(shape.keys_of)
        if table is None:
            return None
        fields = tuple(
            (column, frozenset({(shape.keys_of, column)}), False) for column in table.columns
        )
        exact = False
    masked: list[KeyMask] = []
    for key, lineage, computed in fields:
        found = _mask_of(lineage, computed, catalog, rules)
        if found is not None:
            masked.append(KeyMask(key, found[0], found[1], computed))
    keys = tuple(key for key, _, _ in fields)
    return JsonMask(tuple(masked), keys, exact, shape.aggregated)


def whole_value_method(method: MaskMethod) -> MaskMethod:
    """The method for values whose column is not known: partial keeps a part of whatever
    it is given, so those are redacted instead."""
    return MaskMethod.REDACT if method is MaskMethod.PARTIAL else method
