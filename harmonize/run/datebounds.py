"""Plausible date bounds: a parsed date that cannot be a real birth or event is quarantined with a reason.

Sites write placeholders (0001-01-01, 2099-12-31, 2999-01-01) for "unknown" or "open"; loaded as events they
distort every time-at-risk and every age. The bounds come from the mapping's ``date_bounds`` (defaults: birth
not before 1850-01-01, other events not before 1900-01-01, no start after the run date + 1 day), and a source
column may override them. End dates get only the lower bound: a prescription may legitimately end in the future.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from fedomop.harmonize.mapping.models import DateBounds


@dataclass(frozen=True)
class Bound:
    """A mask over the parsed date and the quarantine reason for the rows it holds."""

    mask: pl.Expr
    reason: str


def date_bounds(
    stamp: pl.Expr, column: str, bounds: DateBounds, *, birth: bool, start: bool, today: dt.date | None = None
) -> list[Bound]:
    """The bound checks for one parsed date column (``stamp`` a polars datetime expression)."""
    today = today or dt.datetime.now(dt.UTC).date()
    override = bounds.columns.get(column)
    earliest = bounds.birth_earliest if birth else bounds.event_earliest
    latest: dt.date | None = today + dt.timedelta(days=bounds.future_margin_days) if start else None
    if override is not None:
        earliest = override.earliest or earliest
        latest = override.latest or latest
    day = stamp.dt.date()
    checks = [Bound(day.is_not_null() & (day < earliest), f"implausible date: before {earliest.isoformat()}")]
    if latest is not None:
        after = "run date + margin" if override is None or override.latest is None else "the column's bound"
        checks.append(
            Bound(day.is_not_null() & (day > latest), f"implausible date: after {latest.isoformat()} ({after})")
        )
    return checks
