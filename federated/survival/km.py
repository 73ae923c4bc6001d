"""Kaplan-Meier curves across sites from per-site counts, with small cells never released.

Each site counts, on the study's time grid (intervals of ``width`` days from the index date), the persons at risk
at the start of each interval, the events and the censorings in it. Before release a site merges adjacent
intervals until every released count is 0 or at least the small-cell threshold, and stops at the first interval
whose at-risk count falls below it (the tail of a curve is where cells are smallest). The hub pools on the
boundaries that every site kept and multiplies S = prod(1 - d_k / n_k) over the pooled intervals (the
product-limit estimator on grouped times: n_k is at risk at the start of interval k, as Kaplan and Meier (1958)
count a censoring at time t as at risk at t). With a one-day grid and no suppression this is the exact
Kaplan-Meier estimate of the pooled rows; coarser grids or merged intervals count the persons censored within an
interval as at risk for all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Events = NDArray[Any]  # 0/1 floats or booleans: an event indicator (1 = event, 0 = censored)


@dataclass(frozen=True)
class Interval:
    start: float
    end: float  # exclusive
    at_risk: int
    events: int
    censored: int


def site_counts(time: Array, event: Events, width: float, horizon: float) -> list[Interval]:
    """At risk / events / censored per grid interval [k*width, (k+1)*width) up to ``horizon``."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    intervals = []
    start = 0.0
    while start < horizon:
        end = min(start + width, horizon)
        inside = (time >= start) & (time < end)
        intervals.append(
            Interval(start, end, int((time >= start).sum()), int((inside & event).sum()), int((inside & ~event).sum()))
        )
        start = end
    return intervals


def _small(count: int, threshold: int) -> bool:
    return 0 < count < threshold


def releasable(intervals: list[Interval], threshold: int) -> list[Interval]:
    """Merge adjacent intervals until no count is a small cell; cut the curve where fewer than ``threshold`` are
    at risk. What this returns can leave the site."""
    released: list[Interval] = []
    pending: Interval | None = None
    for item in intervals:
        if item.at_risk < threshold:
            break
        if pending is None:
            pending = item
        else:
            pending = Interval(
                pending.start,
                item.end,
                pending.at_risk,
                pending.events + item.events,
                pending.censored + item.censored,
            )
        if not _small(pending.events, threshold) and not _small(pending.censored, threshold):
            released.append(pending)
            pending = None
    return released  # a pending remainder with small cells is withheld


def pooled_curve(sites: list[list[Interval]]) -> list[tuple[float, float, int, int]]:
    """(end of interval, pooled survival, at risk, events) on the boundaries every site released."""
    if not sites or any(not s for s in sites):
        return []
    common = set.intersection(*({i.end for i in s} for s in sites))
    horizon = min(s[-1].end for s in sites)
    boundaries = sorted(b for b in common if b <= horizon)
    curve = []
    survival = 1.0
    previous = 0.0
    for boundary in boundaries:
        at_risk = 0
        events = 0
        for intervals in sites:
            members = [i for i in intervals if previous <= i.start and i.end <= boundary]
            if members:
                at_risk += members[0].at_risk
                events += sum(i.events for i in members)
        if at_risk:
            survival *= 1.0 - events / at_risk
        curve.append((boundary, survival, at_risk, events))
        previous = boundary
    return curve


def counts_between(time: Array, event: Events, start: float, end: float) -> Interval:
    """A site's at-risk / events / censored for one interval [start, end)."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    inside = (time >= start) & (time < end)
    return Interval(start, end, int((time >= start).sum()), int((inside & event).sum()), int((inside & ~event).sum()))


def releasable_between(time: Array, event: Events, start: float, end: float, threshold: int) -> bool:
    """The one bit a site answers when the hub proposes an interval: could its counts there leave the site?"""
    counts = counts_between(time, event, start, end)
    return (
        counts.at_risk >= threshold and not _small(counts.events, threshold) and not _small(counts.censored, threshold)
    )


def agreed_boundaries(sites: list[tuple[Array, Events]], width: float, horizon: float, threshold: int) -> list[float]:
    """Interval ends every site can release: the hub widens the current interval by ``width`` until every site
    answers yes (one bit each), so all sites then release counts on the same grid and the pooled curve is exact
    on it. The curve stops where a site has fewer than ``threshold`` at risk."""
    boundaries: list[float] = []
    start, end = 0.0, width
    while end <= horizon + 1e-9:
        if any(counts_between(t, e, start, end).at_risk < threshold for t, e in sites):
            break
        if all(releasable_between(t, e, start, end, threshold) for t, e in sites):
            boundaries.append(end)
            start = end
        end += width
    return boundaries


def counts_on(time: Array, event: Events, boundaries: list[float]) -> list[Interval]:
    """A site's counts on the agreed grid (what it releases); no agreed interval, nothing released."""
    if not boundaries:
        return []
    starts = [0.0, *boundaries[:-1]]
    return [counts_between(time, event, s, e) for s, e in zip(starts, boundaries, strict=True)]
