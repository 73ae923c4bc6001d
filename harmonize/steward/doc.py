"""A readable document of a mapping (like Rabbit-in-a-Hat's export) for the hospital's ETL review.

It is written from the loaded, validated mapping (includes merged), so what the reviewers read is what runs.
"""

from __future__ import annotations

from pathlib import Path

from fedomop.harmonize.mapping.models import (
    ColumnExpr,
    ConstantExpr,
    DateExpr,
    MapExpr,
    Mapping,
    Rule,
)


def _expr(value: object) -> str:
    if isinstance(value, ColumnExpr):
        return f"column `{value.column}`" + (f" as {value.cast}" if value.cast else "")
    if isinstance(value, ConstantExpr):
        return f"constant {value.constant}" + (f" ({value.name})" if value.name else "")
    if isinstance(value, DateExpr):
        return f"date from `{value.date}`" + (f" ({value.format})" if value.format else "")
    if isinstance(value, MapExpr):
        pairs = "; ".join(
            f"{k} → {getattr(v, 'concept_id', v)}" + (f" {v.name}" if hasattr(v, "name") else "")
            for k, v in value.values.items()
        )
        default = getattr(value.default, "concept_id", value.default)
        return f"`{value.map}` mapped: {pairs}; otherwise {default}"
    return str(value)


def _rule_rows(table: str, rule: Rule) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if rule.when is not None:
        rows.append(("(rows taken)", rule.when.describe()))
    slots = {"id": "source record id", "person": "person_id (via person source id)", "visit": "visit_occurrence_id",
             "provider": "provider_id", "care_site": "care_site_id", "location": "location_id"}  # fmt: skip
    for slot, target in slots.items():
        column = getattr(rule, slot)
        if column:
            rows.append((target, f"column `{column}`"))
    if rule.concept is not None:
        c = rule.concept
        vocab = c.vocabulary or (
            f"column `{c.vocabulary_column}`" if c.vocabulary_column else f"system `{c.system_column}`"
        )
        route = ", routed by the concept's domain" if rule.route_by_domain else ""
        among = f" (or the first coding of `{c.codings}` that maps)" if c.codings else ""
        rows.append((f"{table} concept", f"code `{c.code}` in {vocab}{among} → standard concept{route}"))
    for column, wide in (rule.unpivot or {}).items():  # a wide export: one row per column holding a value
        unit = f"`{wide.unit_column}`" if wide.unit_column else (wide.unit or "none")
        rows.append((f"{table} row", f"column `{column}` = value; code `{wide.code or column}` in "
                     f"{wide.vocabulary} → standard concept; unit {unit}"))  # fmt: skip
    if rule.start is not None:
        rows.append(("start date", _expr(rule.start)))
    if rule.end is not None:
        rows.append(("end date", _expr(rule.end)))
    if rule.value is not None:
        unit = f"`{rule.value.unit}`" if rule.value.unit else (rule.value.unit_constant or "none")
        rows.append(("value_as_number / unit", f"`{rule.value.number}`, unit {unit}"))
    if rule.type_concept is not None:
        rows.append(("type concept", _expr(rule.type_concept)))
    rows += [(name, _expr(value)) for name, value in rule.fields.items()]
    return rows


def mapping_document(mapping: Mapping, *, title: str | None = None) -> str:
    """The mapping as Markdown: sources, then one section per OMOP table and rule, then units and vocabulary."""
    out = [f"# {title or 'Mapping of ' + mapping.site}", "", f"Site `{mapping.site}`; unmapped codes: "
           f"{mapping.on_unmapped}; vocabulary `{mapping.vocabulary.folder}`"
           + (f", site concept map `{mapping.vocabulary.source_to_concept_map}`" if mapping.vocabulary.source_to_concept_map else "")
           + "".join(f", site concepts `{e}` (vocabulary extension)" for e in mapping.vocabulary.extensions)
           + ".", "", "## Sources", "", "| source | format | files | date format | delimiter |", "|---|---|---|---|---|"]  # fmt: skip
    for name, s in mapping.sources.items():
        out.append(f"| {name} | {s.format} | `{s.files}` | `{s.date_format}` | `{s.delimiter}` |")
    for table, rules in mapping.tables.items():
        out += ["", f"## {table}"]
        for index, rule in enumerate(rules, start=1):
            out += ["", f"### rule {index}: from `{rule.source}`", "", "| OMOP field | from |", "|---|---|"]
            out += [f"| {target} | {how.replace('|', '/')} |" for target, how in _rule_rows(table, rule)]
    if mapping.units:
        out += ["", "## Units", "", "| analyte | standard unit | conversions | plausible range |", "|---|---|---|---|"]
        for u in mapping.units:
            analyte = f"{u.concept.vocabulary} {u.concept.code} {u.concept.name}" if u.concept else "any"
            factors = ", ".join(f"{k} ×{v:g}" for k, v in u.factors.items()) or "-"
            out.append(f"| {analyte} | {u.standard} | {factors} | {u.range or '-'} |")
    if mapping.unit_aliases:
        out += ["", "Unit aliases: " + ", ".join(f"{k} = {v}" for k, v in mapping.unit_aliases.items())]
    return "\n".join(out) + "\n"


def write_mapping_document(mapping: Mapping, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(mapping_document(mapping), encoding="utf-8")
    return out
