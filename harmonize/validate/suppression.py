"""Small-cell suppression: the one place where counts are made safe to leave the site.

Everything the report builders compute that counts persons or records is wrapped
in :class:`Count` (and percentages computed from such a count in :class:`Percent`).
:func:`suppress` walks the whole report once and replaces every count in
``1 .. threshold-1`` by the string ``"<threshold"`` (e.g. ``"<10"``) and every
percentage whose numerator was suppressed by ``None``. The JSON and HTML writers
only accept a suppressed report (:func:`assert_suppressed`), so a count cannot
reach a file without passing through here.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

from harmonize.errors import ValidationError

DEFAULT_SMALL_CELL = 10


class Count(int):
    """A number of persons or records; suppressed below the small-cell threshold."""


class Percent(float):
    """A percentage computed from a count (its numerator); hidden when the numerator is suppressed."""

    numerator: int

    def __new__(cls, value: float, numerator: int) -> Percent:
        obj = super().__new__(cls, value)
        obj.numerator = int(numerator)
        return obj


def percent(numerator: int | None, denominator: int | None) -> Percent | None:
    if numerator is None or not denominator:
        return None
    return Percent(100.0 * numerator / denominator, numerator)


def suppressed_label(threshold: int) -> str:
    return f"<{threshold}"


def is_small(value: int, threshold: int) -> bool:
    return 0 < value < threshold


def suppress(report: Any, threshold: int = DEFAULT_SMALL_CELL) -> Any:
    """A copy of ``report`` (dicts, lists, dataclasses, scalars) with every small Count and its Percents hidden."""
    if threshold < 1:
        raise ValidationError(
            f"small-cell threshold {threshold} must be at least 1", fix="use --small-cell 10 (the default) or more"
        )
    return _walk(report, threshold)


def _walk(value: Any, threshold: int) -> Any:
    if isinstance(value, Count):
        return suppressed_label(threshold) if is_small(int(value), threshold) else int(value)
    if isinstance(value, Percent):
        return None if is_small(value.numerator, threshold) else round(float(value), 4)
    if isinstance(value, dict):
        return {str(k): _walk(v, threshold) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, threshold) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _walk(asdict(value), threshold)
    return value


def assert_suppressed(report: Any, where: str = "report") -> None:
    """Refuse to write a report that did not go through :func:`suppress` (a raw Count is still in it)."""
    if isinstance(report, Count | Percent):
        raise ValidationError(
            "a raw count reached the report writer without small-cell suppression",
            where=where,
            fix="pass the report through harmonize.validate.suppression.suppress() first",
        )
    if isinstance(report, dict):
        for key, value in report.items():
            assert_suppressed(value, f"{where}.{key}")
    elif isinstance(report, list | tuple):
        for n, value in enumerate(report):
            assert_suppressed(value, f"{where}[{n}]")
