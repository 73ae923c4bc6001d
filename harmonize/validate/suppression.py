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

from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from typing import Any

from fedomop.harmonize.ground.errors import ValidationError

DEFAULT_SMALL_CELL = 10


class Count(int):
    """A number of persons or records; suppressed below the small-cell threshold.

    ``group`` names counts that add up to a total shown elsewhere (mapped + unmapped = records): when one
    member of a group is suppressed, the other members are hidden too (``None``), so that the small one
    cannot be recovered by subtraction.
    """

    group: str | None

    def __new__(cls, value: int, group: str | None = None) -> Count:
        obj = super().__new__(cls, value)
        obj.group = group
        return obj


class Percent(float):
    """A percentage computed from a count (its numerator); hidden when the numerator is suppressed or hidden."""

    numerator: int

    def __new__(cls, value: float, numerator: int) -> Percent:
        obj = super().__new__(cls, value)
        obj.numerator = numerator
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
    """A copy of ``report`` (dicts, lists, dataclasses, scalars) with every small Count shown as ``"<threshold"``,
    the other members of its group and every percentage computed from a hidden count set to ``None``."""
    if threshold < 1:
        raise ValidationError(
            f"small-cell threshold {threshold} must be at least 1", fix="use --small-cell 10 (the default) or more"
        )
    compromised = {c.group for c in _counts(report) if c.group is not None and is_small(int(c), threshold)}
    return _walk(report, threshold, compromised)


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


def _walk(value: Any, threshold: int, compromised: set[str | None]) -> Any:
    if isinstance(value, Count):
        if is_small(int(value), threshold):
            return suppressed_label(threshold)
        return None if value.group in compromised else int(value)
    if isinstance(value, Percent):
        return None if _hidden(value.numerator, threshold, compromised) else round(float(value), 4)
    if isinstance(value, dict):
        return {str(k): _walk(v, threshold, compromised) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, threshold, compromised) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _walk(asdict(value), threshold, compromised)
    return value


def assert_suppressed(report: Any, where: str = "report") -> None:
    """Refuse to write a report that did not go through :func:`suppress` (a raw Count is still in it)."""
    if isinstance(report, Count | Percent):
        raise ValidationError(
            "a raw count reached the report writer without small-cell suppression",
            where=where,
            fix="pass the report through fedomop.harmonize.validate.suppression.suppress() first",
        )
    if isinstance(report, dict):
        for key, value in report.items():
            assert_suppressed(value, f"{where}.{key}")
    elif isinstance(report, list | tuple):
        for n, value in enumerate(report):
            assert_suppressed(value, f"{where}[{n}]")
