"""Compare sites from their suppressed report.json files only (nothing else leaves a site).

Sites are put side by side (persons, fatal failures, checks per Kahn category, mapping
coverage, key measurement medians), and a site is flagged when its median of a
measurement concept is ``factor`` times (default 10x) above or below the median of the
sites' medians — the signature of a unit mapping error (g/L vs mg/dL, mmol vs
mg) — or when its mapping coverage of a table is far below the others'.

The counts a comparison shows (persons, measurement records) go through the small-cell rule again
(:mod:`fedomop.harmonize.ground.smallcell`) at the comparison's threshold or the report's, whichever is higher:
a report written with a lower threshold than the comparison's policy shows no cell the policy withholds, and a
median over a withheld number of records is withheld with it.
"""

from __future__ import annotations

import json
import math
import statistics
from html import escape
from pathlib import Path
from typing import Any

from fedomop.harmonize.ground import smallcell
from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.validate.report import load_report

DEFAULT_FACTOR = 10.0
COVERAGE_GAP_POINTS = 20.0


def _medians_by_concept(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per measurement concept, the entry (unit) with the most records."""
    best: dict[int, dict[str, Any]] = {}
    for m in report.get("measurements", []):
        current = best.get(m["concept_id"])
        if current is None or _released(m["records"]) > _released(current["records"]):
            best[int(m["concept_id"])] = m
    return best


def _released(value: Any) -> int:
    """A released count as a number; a withheld cell (label or None) counts as 0 for choosing among entries."""
    return 0 if smallcell.is_withheld(value) else int(value)


def _count(value: Any) -> Any:
    """A released count becomes a :class:`~fedomop.harmonize.ground.smallcell.Count` again; labels stay as they are."""
    return value if smallcell.is_withheld(value) or isinstance(value, bool) else smallcell.Count(int(value))


def site_summary(report: dict[str, Any], small_cell: int = smallcell.DEFAULT_THRESHOLD) -> dict[str, Any]:
    """What a site shows in the comparison: its suppressed numbers, with counts through the small-cell rule again."""
    threshold = max(small_cell, int(report.get("suppression", {}).get("small_cell_threshold", 1)))
    medians = {
        str(c): {
            "concept_name": m["concept_name"],
            "unit_name": m["unit_name"],
            "median": m["median"],
            "records": _count(m["records"]),
        }
        for c, m in _medians_by_concept(report).items()
    }
    summary = smallcell.suppress(_summary(report, medians), threshold)
    for entry in summary["measurement_medians"].values():
        if smallcell.is_withheld(entry["records"]):
            entry["median"] = None
    return summary


def _summary(report: dict[str, Any], medians: dict[str, Any]) -> dict[str, Any]:
    return {
        "site": report["site"],
        "persons": _count(report.get("persons")),
        "checks": report["overview"]["checks"],
        "fatal_failures": report["overview"]["fatal_failures"],
        "by_kahn_category": {
            e["category"]: {"pass": e["pass"], "fail": e["fail"]} for e in report["overview"]["by_kahn_category"]
        },
        "mapping_coverage": {t["table"]: _coverage_interval(t) for t in report["mapping_coverage"]["tables"]},
        "measurement_medians": medians,
    }


def _coverage_interval(entry: dict[str, Any]) -> list[float] | None:
    """A table's share of mapped records as [low, high] percent: equal ends when the report released it, the
    report's bounds where a small cell withheld it (a near-complete site is "at least 99.2%", not blank)."""
    pct = entry.get("pct_mapped")
    if isinstance(pct, int | float):
        return [float(pct), float(pct)]
    bounds = entry.get("pct_mapped_bounds")
    return [float(bounds[0]), float(bounds[1])] if bounds else None


def coverage_text(interval: list[float] | None) -> str:
    """How a coverage interval reads: "28.5%", "≥ 99.2%", "≤ 0.9%" or "withheld"."""
    if interval is None:
        return "withheld"
    low, high = interval
    if low == high:
        return f"{low:.1f}%"
    return f"≥ {low:.1f}%" if high >= 100 else f"≤ {high:.1f}%"


def _measurement_flags(summaries: list[dict[str, Any]], factor: float) -> list[dict[str, Any]]:
    concepts = sorted({c for s in summaries for c in s["measurement_medians"]}, key=int)
    flags = []
    for concept in concepts:
        values = {
            s["site"]: s["measurement_medians"][concept] for s in summaries if concept in s["measurement_medians"]
        }
        if len(values) < 2:
            continue
        positive = [v["median"] for v in values.values() if v["median"] and v["median"] > 0]
        if len(positive) < 2:
            continue
        # The median over all sites is robust as long as most sites agree; with two sites both are flagged.
        reference = statistics.median(positive)
        for site, entry in values.items():
            if not entry["median"] or entry["median"] <= 0:
                continue
            ratio = entry["median"] / reference
            if abs(math.log10(ratio)) >= math.log10(factor):
                flags.append(
                    {
                        "site": site,
                        "kind": "measurement_distribution",
                        "concept_id": int(concept),
                        "concept_name": entry["concept_name"],
                        "unit_name": entry["unit_name"],
                        "site_median": entry["median"],
                        "sites_median": reference,
                        "ratio": ratio,
                        "message": (
                            f"{entry['concept_name'] or concept}: median {entry['median']:.4g} {entry['unit_name']} is "
                            f"{ratio:.3g}x the median across sites ({reference:.4g}) — check the unit mapping"
                        ),
                    }
                )
    return flags


def _coverage_flags(summaries: list[dict[str, Any]], gap: float) -> list[dict[str, Any]]:
    """A site is flagged when its coverage of a table is surely ``gap`` points below the other sites' median:
    its upper end against the median of their lower ends, so a withheld share never hides a difference."""
    tables = sorted({t for s in summaries for t in s["mapping_coverage"]})
    flags = []
    for table in tables:
        values = {s["site"]: s["mapping_coverage"].get(table) for s in summaries}
        known = {site: v for site, v in values.items() if v is not None}
        for site, (_low, high) in known.items():
            others = [v[0] for other, v in known.items() if other != site]
            if others and statistics.median(others) - high >= gap:
                reference = statistics.median(others)
                flags.append(
                    {
                        "site": site,
                        "kind": "mapping_coverage",
                        "table": table,
                        "site_pct_mapped": known[site],
                        "others_pct_mapped": reference,
                        "message": (
                            f"{table}: {coverage_text(known[site])} mapped vs at least {reference:.1f}% "
                            "at the other sites (median) — check the concept maps"
                        ),
                    }
                )
    return flags


def compare_reports(
    reports: list[dict[str, Any] | str | Path],
    *,
    factor: float = DEFAULT_FACTOR,
    coverage_gap: float = COVERAGE_GAP_POINTS,
    small_cell: int = smallcell.DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Side-by-side summaries and flags for two or more sites' suppressed reports."""
    loaded = [r if isinstance(r, dict) else load_report(r) for r in reports]
    for n, report in enumerate(loaded):
        if report.get("audience") == "internal":
            raise ValidationError(
                f"report of {report.get('site')!r} is the internal one (exact counts)",
                where=str(reports[n]) if not isinstance(reports[n], dict) else f"report {n + 1}",
                fix="compare the shareable report.json (small cells withheld), not internal/report.json",
            )
    if len(loaded) < 2:
        raise ValidationError("comparing needs at least two reports", fix="pass two or more report.json files")
    if factor <= 1:
        raise ValidationError(f"factor {factor} must be greater than 1", fix="use e.g. --factor 10")
    summaries = [site_summary(r, small_cell) for r in loaded]
    names = [s["site"] for s in summaries]
    if len(set(names)) != len(names):
        for n, s in enumerate(summaries):
            s["site"] = f"{s['site']}#{n + 1}"
    flags = _measurement_flags(summaries, factor) + _coverage_flags(summaries, coverage_gap)
    return {"format": "fedomop-qa-comparison/1", "factor": factor, "sites": summaries, "flags": flags}


def write_comparison(comparison: dict[str, Any], out: Path | str) -> tuple[Path, Path]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / "comparison.json", folder / "comparison.html"
    json_path.write_text(json.dumps(comparison, indent=1, allow_nan=False), encoding="utf-8")
    html_path.write_text(render_comparison_html(comparison), encoding="utf-8")
    return json_path, html_path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="n">{value:.4g}</td>'
    if isinstance(value, int):
        return f'<td class="n">{value:,}</td>'
    return f'<td class="n">{escape("" if value is None else str(value))}</td>'


def render_comparison_html(comparison: dict[str, Any]) -> str:
    """A small self-contained page: one column per site, flags on top."""
    sites = comparison["sites"]
    head = "<tr><th></th>" + "".join(f"<th>{escape(s['site'])}</th>" for s in sites) + "</tr>"
    rows = [
        "<tr><td>persons</td>" + "".join(_cell(s["persons"]) for s in sites) + "</tr>",
        "<tr><td>fatal failures</td>" + "".join(_cell(s["fatal_failures"]) for s in sites) + "</tr>",
    ]
    for category in sorted({c for s in sites for c in s["by_kahn_category"]}):
        rows.append(
            f"<tr><td>{escape(category)} checks failed</td>"
            + "".join(_cell(s["by_kahn_category"].get(category, {}).get("fail")) for s in sites)
            + "</tr>"
        )
    for table in sorted({t for s in sites for t in s["mapping_coverage"]}):
        rows.append(
            f"<tr><td>% mapped: {escape(table)}</td>"
            + "".join(_cell(coverage_text(s["mapping_coverage"].get(table))) for s in sites)
            + "</tr>"
        )
    for concept in sorted({c for s in sites for c in s["measurement_medians"]}, key=int):
        name = next(
            s["measurement_medians"][concept]["concept_name"] for s in sites if concept in s["measurement_medians"]
        )
        rows.append(
            f"<tr><td>median: {escape(name or concept)}</td>"
            + "".join(_cell(s["measurement_medians"].get(concept, {}).get("median")) for s in sites)
            + "</tr>"
        )
    flags = "".join(f"<li><b>{escape(f['site'])}</b>: {escape(f['message'])}</li>" for f in comparison["flags"])
    flag_html = f"<ul class='flags'>{flags}</ul>" if flags else "<p>No site disagrees with the others.</p>"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fedomop site comparison</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:24px;color:#1f2933}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #d9dee3;padding:4px 10px}td.n{text-align:right}.flags li{color:#c62828}"
        "</style></head><body><h1>Site comparison</h1><h2>Flags</h2>"
        f"{flag_html}<h2>Side by side</h2><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
        "<p>Computed only from the sites' small-cell-suppressed report.json files.</p></body></html>"
    )
