"""Render a suppressed QA report as one self-contained HTML file (inline CSS, JS and SVG; no network).

The renderer only reads the suppressed report dictionary, the same one written as
JSON, so the HTML cannot show anything the JSON does not. Count cells carry
``class="n"`` and SVG bars a ``data-count`` attribute (tests read both).
"""

from __future__ import annotations

from html import escape
from importlib import resources
from string import Template
from typing import Any

from fedomop.harmonize.ground.smallcell import assert_suppressed
from fedomop.harmonize.validate.catalogue import check_semantics

STATUS_ORDER = ("fail", "error", "pass", "not_applicable")
_PLOT_W, _PLOT_H, _PAD = 320, 130, 26


def _template() -> Template:
    return Template(
        (resources.files("fedomop.harmonize.validate") / "data" / "report_template.html").read_text("utf-8")
    )


def _text(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _num(value: Any) -> str:
    """A count cell: integers with thin separators, suppressed labels as they are."""
    if isinstance(value, bool) or value is None:
        return f'<td class="n">{_text(value)}</td>'
    if isinstance(value, int):
        return f'<td class="n">{value:,}</td>'
    return f'<td class="n">{_text(value)}</td>'


def _pct(value: Any) -> str:
    return '<td class="p n">' + ("" if value is None else f"{float(value):.2f}%") + "</td>"


def _badge(status: str) -> str:
    return f'<span class="badge {escape(status)}">{escape(status.replace("_", " "))}</span>'


def _table(headers: list[str], rows: list[str], *, table_id: str = "", numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th{' class=n' if i in numeric else ''}>{escape(h)}</th>" for i, h in enumerate(headers))
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{content}</section>'


# -- sections ------------------------------------------------------------------------------------------------


def _overview(report: dict[str, Any]) -> str:
    ov = report["overview"]
    fatal = ov["fatal_failures"]
    low = ", ".join(f"{c['table']} (min_coverage {c['min_coverage']:.0%})" for c in ov.get("coverage_failures", []))
    problems = (
        (["the database holds no person: no check met any data"] if ov.get("no_persons") else [])
        + ([f"{fatal} fatal check(s) failed"] if fatal else [])
        + ([f"coverage below {low}"] if low else [])
    )
    verdict = (
        f'<div class="verdict bad">{escape("; ".join(problems))}</div>'
        if problems
        else '<div class="verdict good">All fatal checks pass</div>'
    )
    rows = []
    for entry in ov["by_kahn_category"]:
        total = sum(entry[s] for s in STATUS_ORDER)
        rows.append(
            f"<tr><td>{_text(entry['category'])}</td>{_num_plain(entry['pass'])}{_num_plain(entry['fail'])}"
            f"{_num_plain(entry['not_applicable'])}{_num_plain(entry['error'])}<td>{_stack_bar(entry, total)}</td></tr>"
        )
    table = _table(
        ["Kahn category", "pass", "fail", "not applicable", "error", ""],
        rows,
        table_id="overview-table",
        numeric={1, 2, 3, 4},
    )
    sev_rows = [
        f"<tr><td>{_text(e['severity'])}</td>{_num_plain(e['pass'])}{_num_plain(e['fail'])}"
        f"{_num_plain(e['not_applicable'])}{_num_plain(e['error'])}</tr>"
        for e in ov["by_severity"]
    ]
    persons = report.get("persons")
    facts = (
        f'<p class="note">Persons: {_text(_fmt(persons))} · checks run: {ov["checks"]:,} · '
        f"{_text(report['suppression']['rule'])}</p>"
    )

    failed = "".join(f"<li>{_text(c)}</li>" for c in ov["fatal_failed_checks"])
    failed_html = (
        f"<details><summary>Fatal failures ({len(ov['fatal_failed_checks'])})</summary><ul>{failed}</ul></details>"
        if failed
        else ""
    )
    severity = _table(
        ["severity", "pass", "fail", "not applicable", "error"],
        sev_rows,
        table_id="severity-table",
        numeric={1, 2, 3, 4},
    )
    return _section("overview", "Overview", verdict + facts + table + "<h3>By severity</h3>" + severity + failed_html)


def _num_plain(value: int) -> str:
    """A number of checks (not of persons): never suppressed, kept out of the count-cell class."""
    return f'<td class="k">{value:,}</td>'


def _fmt(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _stack_bar(entry: dict[str, Any], total: int) -> str:
    width, x, parts = 220, 0.0, []
    colors = {"pass": "#2e7d32", "fail": "#c62828", "not_applicable": "#bdbdbd", "error": "#ef6c00"}
    for status in ("pass", "fail", "error", "not_applicable"):
        w = width * entry[status] / total if total else 0
        if w:
            parts.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="12" fill="{colors[status]}"/>')
        x += w
    return f'<svg width="{width}" height="12" role="img">{"".join(parts)}</svg>'


def _options(values: list[str]) -> str:
    return '<option value="">all</option>' + "".join(f'<option value="{_text(v)}">{_text(v)}</option>' for v in values)


def _checks(report: dict[str, Any]) -> str:
    checks = sorted(report["checks"], key=lambda c: (STATUS_ORDER.index(c["status"]), c["check_id"]))
    filters = (
        '<div class="filters">'
        + "".join(
            f'<label>{label} <select data-filter="{key}">{_options(sorted({str(c[field]) for c in checks}))}</select></label>'
            for label, key, field in (
                ("status", "status", "status"),
                ("Kahn category", "category", "kahn_category"),
                ("table", "table", "table"),
                ("severity", "severity", "severity"),
            )
        )
        + '<label>text <input id="filter-text" type="search" placeholder="check, field, concept…"></label>'
        + '<span id="filter-count" class="note"></span></div>'
    )
    rows = [_check_row(c) for c in checks]
    head = "".join(
        f"<th{' class=n' if n in (5, 6, 7, 8) else ''}>{escape(h)}</th>"
        for n, h in enumerate(
            ["status", "check", "table", "field / concept", "severity", "violated", "rows", "% violated", "threshold",
             "description, what to do, SQL"]
        )
    )  # fmt: skip
    widths = "".join(f'<col style="width:{w}%">' for w in (7, 15, 10, 13, 8, 6, 6, 6, 6, 23))
    table = (
        f'<table id="check-table"><colgroup>{widths}</colgroup><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return _section(
        "checks", "Data-quality checks (OHDSI DQD catalogue)", filters + f'<div class="scroll">{table}</div>'
    )


def _check_row(c: dict[str, Any]) -> str:
    """One check: counts in their own narrow columns; for a failed check, what to do and the SQL that lists the
    violating rows (to run at the site: it returns row-level data, which never leaves the site in this report)."""
    target = ".".join(str(p) for p in (c["field"], c["concept_id"], c["unit_concept_id"]) if p not in (None, ""))
    kind = " / ".join(str(k) for k in (c["kahn_category"], c["kahn_subcategory"]) if k)
    details = _text(c["description"]) + (f"<br><i>{_text(c['reason'])}</i>" if c["reason"] else "")
    if c["status"] == "fail":
        todo = check_semantics().get(str(c["check_name"]), {}).get("what_to_do", "")
        details += f'<div class="todo"><b>What to do:</b> {_text(todo)}</div>' if todo else ""
        if c.get("query_text"):
            details += f"<details><summary>SQL listing the violating rows</summary><pre>{_text(c['query_text'])}</pre></details>"
    return (
        f'<tr data-status="{_text(c["status"])}" data-category="{_text(c["kahn_category"])}" '
        f'data-table="{_text(c["table"])}" data-severity="{_text(c["severity"])}">'
        f"<td>{_badge(c['status'])}</td><td>{_text(c['check_name'])}<div class='note'>{_text(kind)}</div></td>"
        f"<td>{_text(c['table'])}</td><td>{_text(target)}</td><td>{_text(c['severity'])}</td>"
        f"{_num(c['num_violated_rows'])}{_num(c['num_denominator_rows'])}{_pct(c['pct_violated_rows'])}"
        f"<td class='k'>{c['threshold']:g}%</td><td class='d'>{details}</td></tr>"
    )


def _schemas(report: dict[str, Any]) -> str:
    schemas = report["schemas"]
    rows = []
    for s in schemas["tables"]:
        failures = "; ".join(f"{f['column']}: {f['check']} ({_fmt(f['rows'])})" for f in s["failures"])
        rows.append(
            f"<tr><td>{_text(s['table'])}</td>{_num(s['rows_in_table'])}{_num(s['rows_checked'])}"
            f"<td>{'sample' if s['sampled'] else 'all rows'}</td><td>{_text(s['status'])}</td><td>{_text(failures)}</td></tr>"
        )
    table = _table(["table", "rows", "rows checked", "coverage", "status", "failures"], rows, numeric={1, 2})
    return _section("schemas", "Schema validation (pandera)", f'<p class="note">{_text(schemas["note"])}</p>{table}')


def _coverage_share(entry: dict[str, Any]) -> str:
    """The exact share, or the interval it lies in where a small cell withholds it (``≥ 99.2%``)."""
    if entry.get("pct_mapped") is not None:
        return _pct(entry["pct_mapped"])
    bounds = entry.get("pct_mapped_bounds")
    if not bounds:
        return _pct(None)
    text = f"≥ {bounds[0]:.2f}%" if bounds[1] >= 100 else f"≤ {bounds[1]:.2f}%"
    return f'<td class="p n">{escape(text)}</td>'


def _coverage(report: dict[str, Any]) -> str:
    cov = report["mapping_coverage"]
    rows = [
        f"<tr><td>{_text(t['table'])}</td><td>{_text(t['field'])}</td>{_num(t['records'])}{_num(t['mapped'])}"
        f"{_num(t['unmapped'])}{_coverage_share(t)}"
        f"<td>{_share_bar(t['pct_mapped'] if t['pct_mapped'] is not None else (t.get('pct_mapped_bounds') or [None])[0])}</td></tr>"
        for t in cov["tables"]
    ]
    table = _table(
        ["table", "standard concept field", "records", "mapped", "unmapped", "% mapped", ""], rows, numeric={2, 3, 4, 5}
    )
    by_vocabulary = [
        f"<tr><td>{_text(v['table'])}</td><td>{_text(v['source_vocabulary_id'])}</td>{_num(v['records'])}"
        f"{_num(v['mapped'])}{_num(v['unmapped'])}{_pct(v['pct_mapped'])}</tr>"
        for v in cov.get("by_vocabulary", [])
    ]
    vocabulary_table = _table(
        ["table", "source vocabulary", "records", "mapped", "unmapped", "% mapped"], by_vocabulary, numeric={2, 3, 4, 5}
    )
    top = [
        f"<tr><td>{_text(u['table'])}</td><td>{_text(u.get('source_vocabulary_id'))}</td>"
        f"<td>{_text(u['source_value'])}</td>{_num(u['records'])}</tr>"
        for u in cov["top_unmapped"]
    ]
    top_table = (
        _table(["table", "source vocabulary", "source code", "records"], top, numeric={3})
        if top
        else '<p class="note">No unmapped records.</p>'
    )
    return _section(
        "coverage",
        "Mapping coverage",
        '<p class="note">Share of records whose standard concept is not 0 (mapped to a standard concept). '
        "A blank count is hidden because its complement is suppressed; a share shown as ≥ or ≤ is the interval "
        "a withheld share lies in.</p>"
        + table
        + ("<h3>By source vocabulary</h3>" + vocabulary_table if by_vocabulary else "")
        + "<h3>Top unmapped source codes</h3>"
        + top_table,
    )


def _share_bar(pct: Any) -> str:
    if pct is None:
        return ""
    w = 160 * max(0.0, min(100.0, float(pct))) / 100
    return (
        f'<svg width="160" height="10"><rect width="160" height="10" fill="#eceff1"/>'
        f'<rect width="{w:.1f}" height="10" fill="#2e7d32"/></svg>'
    )


def _bookkeeping(report: dict[str, Any]) -> str:
    parts = []
    rec = report["reconciliation"]
    if rec["available"]:
        columns = list(rec["rows"][0]) if rec["rows"] else []
        rows = [
            "<tr>"
            + "".join(
                _num(r[c]) if c in ("source_count", "loaded", "quarantined") else f"<td>{_text(r[c])}</td>"
                for c in columns
            )
            + "</tr>"
            for r in rec["rows"]
        ]
        parts.append("<h3>Reconciliation (source = loaded + quarantined)</h3>" + _table(columns, rows))
    else:
        parts.append(f'<h3>Reconciliation</h3><p class="note">{_text(rec["note"])}</p>')
    qua = report["quarantine"]
    if qua["available"]:
        rows = [
            f"<tr><td>{_text(q['source'])}</td><td>{_text(q['field'])}</td><td>{_text(q['reason'])}</td>{_num(q['records'])}</tr>"
            for q in qua["by_reason"]
        ]
        parts.append(
            f"<h3>Quarantine ({_text(_fmt(qua['total']))} records)</h3>"
            + _table(["source", "field", "reason", "records"], rows, numeric={3})
        )
    else:
        parts.append(f'<h3>Quarantine</h3><p class="note">{_text(qua["note"])}</p>')
    lin = report["lineage"]
    if lin["available"]:
        rows = [f"<tr><td>{_text(t)}</td>{_num(n)}</tr>" for t, n in lin["rows_per_table"].items()]
        parts.append("<h3>Lineage rows per OMOP table</h3>" + _table(["OMOP table", "lineage rows"], rows, numeric={1}))
    else:
        parts.append(f'<h3>Lineage</h3><p class="note">{_text(lin["note"])}</p>')
    return _section("reconciliation", "Reconciliation and quarantine", "".join(parts))


# -- SVG plots -------------------------------------------------------------------------------------------------


def _bar_value(value: Any, threshold: int) -> tuple[float, str]:
    """Height to draw and label: a suppressed bin is drawn at half the threshold, hatched grey."""
    if isinstance(value, int):
        return float(value), f"{value:,}"
    return threshold / 2, str(value)


def _bars_svg(labels: list[str], values: list[Any], threshold: int, color: str) -> str:
    heights = [_bar_value(v, threshold) for v in values]
    top = max((h for h, _ in heights), default=1.0) or 1.0
    inner_w, inner_h = _PLOT_W - _PAD - 6, _PLOT_H - _PAD - 8
    step = inner_w / max(len(values), 1)
    bars = []
    for n, ((h, label), raw) in enumerate(zip(heights, values, strict=True)):
        bar_h = inner_h * h / top
        x, y = _PAD + n * step, 8 + inner_h - bar_h
        fill = color if isinstance(raw, int) else "#b0bec5"
        bars.append(
            f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(step - 1, 0.8):.1f}" height="{bar_h:.1f}" fill="{fill}" '
            f'data-count="{escape(label)}"><title>{escape(labels[n])}: {escape(label)}</title></rect>'
        )
    ticks = []
    for n in sorted({0, len(labels) // 2, len(labels) - 1}) if labels else []:
        anchor = "end" if n == len(labels) - 1 and n else "start"
        x = _PAD + (n + 1) * step if anchor == "end" else _PAD + n * step
        ticks.append(f'<text x="{x:.1f}" y="{_PLOT_H - 8}" text-anchor="{anchor}">{escape(labels[n])}</text>')
    axis = f'<text x="2" y="14">{escape(_fmt(int(top)) if top >= 1 else "")}</text>'
    return (
        f'<svg width="{_PLOT_W}" height="{_PLOT_H}" viewBox="0 0 {_PLOT_W} {_PLOT_H}" role="img">'
        f'<line x1="{_PAD}" y1="{8 + inner_h}" x2="{_PLOT_W - 6}" y2="{8 + inner_h}" stroke="#90a4ae"/>'
        f"{''.join(bars)}{''.join(ticks)}{axis}</svg>"
    )


def _plots(report: dict[str, Any]) -> str:
    threshold = int(report["suppression"]["small_cell_threshold"])
    years = []
    for table, rows in report["records_per_year"].items():
        svg = _bars_svg([str(r["year"]) for r in rows], [r["records"] for r in rows], threshold, "#1e88e5")
        years.append(f'<div class="plot"><div class="title">{escape(table)}: records per year</div>{svg}</div>')
    hists = []
    for m in report["measurements"]:
        edges, counts = m["histogram"]["edges"], m["histogram"]["counts"]
        labels = [f"{edges[i]:.4g}–{edges[i + 1]:.4g}" for i in range(len(counts))]
        svg = _bars_svg(labels, counts, threshold, "#8e24aa")
        unit = m["unit_name"] or f"unit {m['unit_concept_id']}"
        hists.append(
            f'<div class="plot"><div class="title">{escape(m["concept_name"] or str(m["concept_id"]))} '
            f"({escape(unit)})</div>{svg}<div class='note'>n={escape(_fmt(m['records']))} · median {m['median']:.4g} · "
            f"IQR {m['p25']:.4g}–{m['p75']:.4g} · range shown: 1st–99th percentile</div></div>"
        )
    year_html = f'<div class="grid">{"".join(years)}</div>' if years else '<p class="note">No dated records.</p>'
    hist_html = (
        f'<div class="grid">{"".join(hists)}</div>'
        if hists
        else '<p class="note">No measurement with numeric values in enough records.</p>'
    )
    return _section(
        "plots",
        "Plots",
        "<h3>Records per year</h3>" + year_html + "<h3>Key measurement distributions</h3>" + hist_html,
    )


def render_html(report: dict[str, Any]) -> str:
    """The whole report page; refuses a report that has not been through small-cell suppression."""
    assert_suppressed(report)
    title = f"fedomop QA report — {report['site']}"
    meta = (
        f"{_text(report['database'])} · OMOP CDM v{_text(report['cdm_version'])} · generated "
        f"{_text(report['generated_at'])} · fedomop {_text(report['fedomop_version'])} · small cells "
        f"{_text(report['suppression']['label'])} suppressed"
    )
    if report.get("audience") == "internal":
        title += " (internal)"
        meta = f"<b>INTERNAL — exact counts, stays at the site</b> · {meta}"
    sections = [
        ("overview", "Overview"),
        ("checks", "Checks"),
        ("schemas", "Schemas"),
        ("coverage", "Mapping coverage"),
    ]
    sections += [("reconciliation", "Reconciliation"), ("plots", "Plots")]
    nav = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in sections)
    body = (
        _overview(report)
        + _checks(report)
        + _coverage(report)
        + _bookkeeping(report)
        + _plots(report)
        + _schemas(report)
    )
    return _template().substitute(title=escape(title), meta=meta, nav=nav, body=body)
