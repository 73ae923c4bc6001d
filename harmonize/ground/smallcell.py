"""The small-cell policy: one rule, one implementation, for every count that leaves a site.

**The rule.** A count of persons or records in ``1 .. threshold - 1`` is withheld (zero identifies no one and is
released). The threshold comes from the site's policy (QA: ``--small-cell``; federated: the governance policy's
``small_cell_threshold``); :data:`DEFAULT_THRESHOLD` is 10.

**Complementary suppression.** Counts that add up to a total shown elsewhere carry the same ``group``
(``mapped + unmapped = records``). When one member of a group is withheld, every other member is withheld
too, so the small one cannot be recovered by subtracting the others from the total. A percentage computed from
a withheld count (:class:`Percent`) is withheld as well.

**Presentation.** How a withheld cell is *shown* is not a second rule: a report for people writes the label
``"<10"`` (``render="label"``), a machine reply writes ``None`` (``render="none"``). Cells withheld only by the
complementary rule are always ``None``: labelling them ``"<10"`` would be false.

Used by the QA report (:mod:`fedomop.harmonize.validate.report`), the site comparison
(:mod:`fedomop.harmonize.validate.compare`) and federated replies (:mod:`fedomop.federated.governance`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any, Literal

from fedomop.harmonize.ground.errors import ValidationError

DEFAULT_THRESHOLD = 10
Render = Literal["label", "none"]


class Count(int):
    """A number of persons or records; ``group`` names counts that add up to a total shown elsewhere."""

    group: str | None

    def __new__(cls, value: int, group: str | None = None) -> Count:
        obj = super().__new__(cls, value)
        obj.group = group
        return obj


class Percent(float):
    """A percentage computed from a count (its numerator); withheld when the numerator is."""

    numerator: int

    def __new__(cls, value: float, numerator: int) -> Percent:
        obj = super().__new__(cls, value)
        obj.numerator = numerator
        return obj


def percent(numerator: int | None, denominator: int | None) -> Percent | None:
    if numerator is None or not denominator:
        return None
    return Percent(100.0 * numerator / denominator, numerator)


def is_small(value: float, threshold: int) -> bool:
    """The rule: ``0 < value < threshold``."""
    return 0 < value < threshold


def label(threshold: int) -> str:
    """How a report for people shows a withheld cell, e.g. ``"<10"``."""
    return f"<{threshold}"


def withheld(threshold: int, render: Render) -> str | None:
    """How a withheld cell is shown: the label (reports) or ``None`` (machine replies)."""
    return label(threshold) if render == "label" else None


def is_withheld(value: Any) -> bool:
    """Whether a value read back from a suppressed document is a withheld cell (a label or ``None``)."""
    return value is None or (isinstance(value, str) and value.startswith("<"))


def check_threshold(threshold: int) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValidationError(
            f"small-cell threshold {threshold!r} must be a whole number of at least 1",
            fix=f"use {DEFAULT_THRESHOLD} (the default) or more",
        )
    return threshold


def suppress(document: Any, threshold: int = DEFAULT_THRESHOLD, *, render: Render = "label") -> Any:
    """A copy of ``document`` (dicts, lists, dataclasses, scalars) with every :class:`Count` and :class:`Percent`
    passed through the rule and complementary suppression; other values are copied as they are."""
    check_threshold(threshold)
    compromised: set[str | None] = {
        c.group for c in _counts(document) if c.group is not None and is_small(int(c), threshold)
    }
    return _walk(document, threshold, compromised, render)


def suppress_counts(
    counts: Mapping[str, int], threshold: int = DEFAULT_THRESHOLD, *, render: Render = "none", group: str | None = None
) -> dict[str, int | str | None]:
    """Plain counts by key through the rule; with ``group``, they are the parts of a released total."""
    return suppress({key: Count(int(value), group) for key, value in counts.items()}, threshold, render=render)


def _counts(value: Any) -> Iterator[Count]:
    if isinstance(value, Count):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _counts(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _counts(v)
    elif is_dataclass(value) and not isinstance(value, type):
        yield from _counts(asdict(value))


def _hidden(count: int, threshold: int, compromised: set[str | None]) -> bool:
    return is_small(int(count), threshold) or (isinstance(count, Count) and count.group in compromised)


def _walk(value: Any, threshold: int, compromised: set[str | None], render: Render) -> Any:
    if isinstance(value, Count):
        if is_small(int(value), threshold):
            return withheld(threshold, render)
        return None if value.group in compromised else int(value)
    if isinstance(value, Percent):
        return None if _hidden(value.numerator, threshold, compromised) else round(float(value), 4)
    if isinstance(value, dict):
        return {str(k): _walk(v, threshold, compromised, render) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, threshold, compromised, render) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _walk(asdict(value), threshold, compromised, render)
    return value


def assert_suppressed(document: Any, where: str = "report") -> None:
    """Refuse to write a document that did not go through :func:`suppress` (a raw Count is still in it)."""
    if isinstance(document, Count | Percent):
        raise ValidationError(
            "a raw count reached the report writer without small-cell suppression",
            where=where,
            fix="pass the report through fedomop.harmonize.ground.smallcell.suppress() first",
        )
    if isinstance(document, dict):
        for key, value in document.items():
            assert_suppressed(value, f"{where}.{key}")
    elif isinstance(document, list | tuple):
        for n, value in enumerate(document):
            assert_suppressed(value, f"{where}[{n}]")
