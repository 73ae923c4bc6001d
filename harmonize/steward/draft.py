"""Draft a starting mapping YAML from a profile (Rabbit-in-a-Hat's first pass, as text a steward edits).

The draft is meant to run as it is (``fedomop map`` accepts it), so a steward sees real counts and quarantine
reasons on day one; every decision it could not make is a ``# TODO`` comment next to the place it belongs, and
every decision it did make says which column evidence it used. Recognition is by column names *and* profile
facts (a person id is identifier-like, a date column parses as dates, a code column has a guessed code system).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from fedomop.harmonize.steward.profile import ColumnProfile, FileProfile, Profile

EHR_TYPE = (32817, "EHR")
# Code system -> the table its events usually land in (route_by_domain moves each row by its concept's domain).
TABLE_OF_SYSTEM = {
    "LOINC": "measurement",
    "RxNorm": "drug_exposure",
    "RxNorm Extension": "drug_exposure",
    "NDC": "drug_exposure",
    "ICD10CM": "condition_occurrence",
    "ICD9CM": "condition_occurrence",
    "ICD10": "condition_occurrence",
    "SNOMED": "condition_occurrence",
    "CPT4": "procedure_occurrence",
    "HCPCS": "procedure_occurrence",
    "ICD9Proc": "procedure_occurrence",
}
TABLE_OF_DOMAIN = {
    "Condition": "condition_occurrence",
    "Procedure": "procedure_occurrence",
    "Drug": "drug_exposure",
    "Measurement": "measurement",
    "Observation": "observation",
    "Device": "device_exposure",
}
_PERSON_ID = re.compile(r"(patient|person|pat|subject|member|mrn|pid|ipp)(_?(id|key|no|num|nr|code))?$", re.I)
_BIRTH = re.compile(r"birth|dob|born|naiss|geburt|gebdat|geb_?dat|nacimiento|fecha_nac|nascita", re.I)
# death, décès/deces, decesso, Sterbedatum, Todesdatum/tod_datum, fecha_defuncion/fecha_def, fallecimiento, óbito,
# overlijden, exitus; not "today", "todo" or "methode" (tod only as a whole word between underscores or before dat)
_DEATH = re.compile(
    r"death|deceased|dod|died|d[eé]c[eè]s|sterbe|todes|(^|_)tod($|_|dat)|fecha_?def|defunc|fallec|[oó]bito|"
    r"overl(ij|e)d|exitus",
    re.I,
)
_SEX = re.compile(r"^(sex|gender|sexe|geschl|sexo|sesso)", re.I)
_VISIT = re.compile(r"encounter|visit|admission|stay|sejour|episode", re.I)
# a date column that ends something: end_date, stop, discharge/disch_dt/dischg, sortie, leave, departure, date_out
_END = re.compile(r"end|stop|disch|sortie|until|fin$|_fin|leave|depart|(^|_)out($|_)", re.I)
_VALUE = re.compile(r"^(value|result|res|val|valeur|wert|value_as_number|num_value)", re.I)
_UNIT = re.compile(r"unit|unite|einheit|uom", re.I)
_VISIT_TYPE = re.compile(r"type|class|kind|setting", re.I)
_SEX_VALUES = {"m": 8507, "male": 8507, "man": 8507, "h": 8507, "f": 8532, "female": 8532, "woman": 8532,
               "w": 8532, "weiblich": 8532, "männlich": 8507, "maennlich": 8507}  # fmt: skip
_VISIT_VALUES = {
    "inpatient": 9201, "ip": 9201, "imp": 9201, "hospitalisation": 9201,
    "outpatient": 9202, "op": 9202, "amb": 9202, "ambulatory": 9202,
    "emergency": 9203, "er": 9203, "emer": 9203, "urg": 9203, "hc": 9201, "cs": 9202,
}  # fmt: skip


@dataclass
class Draft:
    """The drafted YAML text and what was (not) decided, for the command's summary."""

    text: str
    rules: dict[str, list[str]] = field(default_factory=dict)  # OMOP table -> source names
    todos: list[str] = field(default_factory=list)


def _source_name(path: str) -> str:
    stem = Path(path).stem.lower()
    return re.sub(r"[^a-z0-9_]+", "_", stem).strip("_") or "source"


def _dates(file: FileProfile) -> list[ColumnProfile]:
    return [c for c in file.columns if c.kind == "date"]


def _first(columns: list[ColumnProfile], pattern: re.Pattern[str]) -> ColumnProfile | None:
    return next((c for c in columns if pattern.search(c.name)), None)


def _person_file(profile: Profile) -> tuple[FileProfile, ColumnProfile] | None:
    """The file with a birth date and an identifier-like id column: one row per person."""
    for file in profile.files:
        if _first(_dates(file), _BIRTH) is None:
            continue
        ids = [c for c in file.columns if c.identifier_like and c.nulls == 0 and c.kind != "date"]
        person_id = _first(ids, _PERSON_ID) or (ids[0] if ids else None)
        if person_id is not None:
            return file, person_id
    return None


def _person_column(file: FileProfile, person_id: str) -> ColumnProfile | None:
    return next((c for c in file.columns if c.name == person_id), None) or _first(file.columns, _PERSON_ID)


class _Writer:
    """Accumulates YAML lines; values are quoted by YAML's flow rules where needed."""

    def __init__(self, concepts: pl.DataFrame | None) -> None:
        self.lines: list[str] = []
        self.concepts = concepts
        self.draft = Draft(text="")

    def add(self, line: str = "") -> None:
        self.lines.append(line)

    def todo(self, indent: int, text: str) -> None:
        self.add(" " * indent + f"# TODO: {text}")
        self.draft.todos.append(text)

    def concept_name(self, concept_id: int) -> str | None:
        if self.concepts is None:
            return None
        hit = self.concepts.filter(pl.col("concept_id") == concept_id)
        return None if hit.is_empty() else str(hit.item(0, "concept_name"))

    def rule(self, table: str, source: str) -> None:
        self.draft.rules.setdefault(table, []).append(source)


def _q(value: str) -> str:
    """A YAML scalar: plain when safe, else double-quoted."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ ./-]*", value) and value.lower() not in (
        "yes",
        "no",
        "true",
        "false",
        "null",
        "on",
        "off",
    ):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _type_concept(w: _Writer, indent: int) -> None:
    name = w.concept_name(EHR_TYPE[0])
    if name is None and w.concepts is not None:
        w.todo(
            indent,
            f"concept {EHR_TYPE[0]} ({EHR_TYPE[1]}) is not in the vocabulary; load the OMOP Type Concept vocabulary",
        )
    w.add(" " * indent + f"type_concept: {{constant: {EHR_TYPE[0]}, name: {_q(name or EHR_TYPE[1])}}}")


def _value_map(w: _Writer, indent: int, field_name: str, column: ColumnProfile, known: dict[str, int]) -> None:
    """A ``map`` over the column's top values, for the values whose concept the vocabulary has."""
    pad = " " * indent
    entries = []
    for value, _count in column.top_values:
        concept_id = known.get(value.strip().lower())
        name = w.concept_name(concept_id) if concept_id else None
        if concept_id and (name or w.concepts is None):
            entries.append(f"{pad}    {_q(value)}: {{concept_id: {concept_id}, name: {_q(name or '')}}}")
    unknown = [v for v, _ in column.top_values if v.strip().lower() not in known]
    if unknown:
        w.todo(indent, f"{field_name}: no concept chosen for {column.name} values {', '.join(unknown[:5])}")
    missing: dict[int, list[str]] = {}  # concepts the values name but the vocabulary lacks (Eunomia: no 8507/8532)
    for value, _count in column.top_values:
        concept_id = known.get(value.strip().lower())
        if concept_id and w.concepts is not None and w.concept_name(concept_id) is None:
            missing.setdefault(concept_id, []).append(value)
    if missing:
        named = " or ".join(f"{cid} ({column.name} {', '.join(values)})" for cid, values in missing.items())
        w.todo(
            indent,
            f"{field_name}: the vocabulary has no concept {named}, so it stays 0; load a vocabulary that has "
            "them (a full Athena release does) and draft again, or write the map by hand",
        )
    if not entries:
        w.add(f"{pad}{field_name}: {{constant: 0, name: No matching concept}}")
        return
    w.add(f"{pad}{field_name}:")
    w.add(f"{pad}  map: {_q(column.name)}")
    w.add(f"{pad}  values:")
    w.lines.extend(entries)
    w.add(f"{pad}  default: 0")


def _write_sources(w: _Writer, profile: Profile, used: list[FileProfile]) -> None:
    w.add("sources:")
    for file in used:
        formats = [c.date_format for c in _dates(file) if c.date_format]
        parts = [f"format: {file.format}", f"files: {_q(file.path)}"]
        if file.format == "csv":
            if file.delimiter != ",":
                parts.append(f"delimiter: {_q(file.delimiter or ',')}")
            if file.encoding and file.encoding != "utf-8":
                parts.append(f"encoding: {file.encoding}")
        if formats:
            parts.append(f"date_format: {_q(formats[0])}")
        if len(set(formats)) > 1:
            w.todo(2, f"{file.path} mixes date formats {sorted(set(formats))}; one source reads one format")
        note = ""
        if file.format == "csv":
            decimal, commas = _decimal(w, file)
            if decimal == ",":
                parts.append(f"decimal: {_q(decimal)}")
                note = f"; decimal comma in {', '.join(commas)}"
        w.add(f"  {_source_name(file.path)}: {{{', '.join(parts)}}}  # {file.rows:,} rows{note}")


def _decimal(w: _Writer, file: FileProfile) -> tuple[str, list[str]]:
    """The source's decimal separator (one per source, as the map reads it) and the columns written with a
    comma: the measurement value column's, else the one most number columns use. A file whose columns (or a
    column whose values) use both gets a TODO: read with one, the other's values are unparseable numbers."""
    numbers = [c for c in file.columns if c.kind == "number" and c.decimal]
    value = _first(numbers, _VALUE)
    by = {sep: [c.name for c in numbers if c.decimal == sep] for sep in (".", ",")}
    decimal = value.decimal if value and value.decimal else ("," if len(by[","]) > len(by["."]) else ".")
    other = "." if decimal == "," else ","
    if by["."] and by[","]:
        w.todo(
            2,
            f"{file.path} mixes decimal separators: ',' in {', '.join(by[','])}, '.' in {', '.join(by['.'])}; "
            f"a source reads one (decimal: {_q(decimal)}), so a rule reading a column written with '{other}' "
            "gets unparseable numbers: fix the export, or split the file into two sources",
        )
    for column in numbers:
        if column.decimal_other:
            w.todo(
                2,
                f"{file.path}: {column.name} mixes decimal separators ({column.decimal_other:,} of "
                f"{column.rows - column.nulls:,} values are not written with '{column.decimal}'); read with "
                f"decimal: {_q(decimal)}, those are quarantined as unparseable numbers: fix the export",
            )
    return decimal, by[","]


def _write_person(w: _Writer, file: FileProfile, person_id: ColumnProfile) -> None:
    source = _source_name(file.path)
    birth = _first(_dates(file), _BIRTH)
    assert birth is not None
    w.add("  person:")
    w.add(f"    - source: {source}  # {file.path}: identifier-like {person_id.name}, birth date {birth.name}")
    w.add(f"      id: {_q(person_id.name)}")
    w.add(f"      start: {{date: {_q(birth.name)}}}")
    sex = _first(file.columns, _SEX)
    if sex is None:  # no fields: an empty `fields:` key would read as null and fail to load
        w.todo(6, "no sex/gender column recognised; gender_concept_id stays 0")
    else:
        w.add("      fields:")
        w.add(f"        gender_source_value: {_q(sex.name)}")
        _value_map(w, 8, "gender_concept_id", sex, _SEX_VALUES)
    w.todo(8 if sex is not None else 6, "race_concept_id / ethnicity_concept_id: add a map when the extract has them")
    w.rule("person", source)
    death = _first(_dates(file), _DEATH)
    if death is not None:
        w.add("  death:")
        w.add(f"    - source: {source}")
        w.add(f"      when: {{column: {_q(death.name)}, not_null: true}}")
        w.add(f"      person: {_q(person_id.name)}")
        w.add(f"      start: {{date: {_q(death.name)}}}")
        _type_concept(w, 6)
        w.rule("death", source)


def _visit_file(profile: Profile, person_id: str) -> tuple[FileProfile, ColumnProfile] | None:
    for file in profile.files:
        if not _VISIT.search(Path(file.path).stem):
            continue
        ids = [c for c in file.columns if c.identifier_like and c.name != person_id]
        if ids and _dates(file) and _person_column(file, person_id):
            return file, ids[0]
    return None


def _write_visit(w: _Writer, file: FileProfile, visit_id: ColumnProfile, person_id: str) -> None:
    source = _source_name(file.path)
    dates = _dates(file)
    end = _first(dates, _END)
    start = next(c for c in dates if c is not end)
    person = _person_column(file, person_id)
    assert person is not None
    w.add("  visit_occurrence:")
    w.add(f"    - source: {source}")
    w.add(f"      id: {_q(visit_id.name)}")
    w.add(f"      person: {_q(person.name)}")
    w.add(f"      start: {{date: {_q(start.name)}}}")
    if end is not None:
        w.add(f"      end: {{date: {_q(end.name)}}}")
    else:
        others = [c.name for c in dates if c is not start]
        w.todo(
            6,
            "no end date column recognised, so each visit ends on its start day (the CDM's convention for visits "
            "without an end)"
            + (f"; if one of {', '.join(others)} is the end, write end: {{date: <column>}}" if others else ""),
        )
    _type_concept(w, 6)
    kind = _first([c for c in file.columns if c.kind == "text"], _VISIT_TYPE)
    w.add("      fields:")
    if kind is None:
        w.todo(8, "no visit type column recognised; visit_concept_id stays 0")
        w.add("        visit_concept_id: {constant: 0, name: No matching concept}")
    else:
        _value_map(w, 8, "visit_concept_id", kind, _VISIT_VALUES)
    w.rule("visit_occurrence", source)


_CODE_NAME = re.compile(r"(^|_)(code|cd|cod)(_|$)|code$", re.I)
_LOCAL_TABLES = (
    (re.compile(r"proc|acte|act_|surg|operat", re.I), "procedure_occurrence"),
    (re.compile(r"drug|medic|rx|trait|pharm", re.I), "drug_exposure"),
    (re.compile(r"diag|dx|cim|icd|condition", re.I), "condition_occurrence"),
    (re.compile(r"lab|analy|test|bio|loinc", re.I), "measurement"),
)


def _local_code_column(file: FileProfile, skip: set[str]) -> ColumnProfile | None:
    """A column named like a code that no vocabulary knows (CODE_ACTE, lab_cd): the site's local codes."""
    for column in file.columns:
        if column.name in skip or column.kind not in ("text", "integer") or column.identifier_like:
            continue
        if _CODE_NAME.search(column.name) and 0 < column.distinct <= 5000:
            return column
    return None


def _local_table(file: FileProfile, column: ColumnProfile) -> str:
    """By the code column's or file's name; a file with a numeric result column holds measurements."""
    for pattern, table in _LOCAL_TABLES:
        if pattern.search(column.name) or pattern.search(Path(file.path).stem):
            return table
    numeric = [c for c in file.columns if c.kind in ("number", "integer")]
    return "measurement" if _first(numeric, _VALUE) else "observation"


def _event_rules(
    w: _Writer, file: FileProfile, person: ColumnProfile, visit_id: str | None
) -> list[tuple[str, list[str]]]:
    """One rule per code column with a guessed code system, as (table, YAML lines)."""
    rules = []
    source = _source_name(file.path)
    dates = _dates(file)
    visit = next((c for c in file.columns if c.name == visit_id), None) if visit_id else None
    coded = []
    for column in file.columns:
        table = TABLE_OF_DOMAIN.get(column.code_domain or "") or TABLE_OF_SYSTEM.get(column.code_system or "")
        if table is not None and column.name != person.name:
            coded.append((column, column.code_system or "", table))
    if not coded:
        local = _local_code_column(file, {person.name, visit_id or ""})
        if local is not None:
            coded.append((local, f"{_source_name(file.path).upper()}_LOCAL", _local_table(file, local)))
    for column, system, table in coded:
        end = _first(dates, _END)
        start = next((c for c in dates if c is not end), end)
        if start is None:
            w.todo(4, f"{file.path}: code column {column.name} has no date column; not mapped")
            continue
        if column.code_system:
            note = f"{column.name}: {column.code_system} ({column.code_system_share or 0:.0%} of codes)"
        else:
            note = f"{column.name}: local codes ({column.distinct:,} distinct)"
            w.draft.todos.append(f"{file.path}: {column.name} holds local codes; map them with fedomop codes review")
        lines = [f"    - source: {source}  # {note}", f"      person: {_q(person.name)}"]
        if not column.code_system:
            lines.append("      # TODO: local codes: fedomop codes review lists them; codes apply maps them")
        if visit is not None:
            lines.append(f"      visit: {_q(visit.name)}")
        lines.append(f"      concept: {{code: {_q(column.name)}, vocabulary: {_q(system)}}}")
        lines.append(f"      start: {{date: {_q(start.name)}}}")
        if end is not None and table != "measurement":
            lines.append(f"      end: {{date: {_q(end.name)}}}")
        if table == "measurement":
            value = _first([c for c in file.columns if c.kind in ("number", "integer")], _VALUE)
            unit = _first(file.columns, _UNIT)
            if value is not None:
                unit_part = f", unit: {_q(unit.name)}" if unit is not None else ""
                lines.append(f"      value: {{number: {_q(value.name)}{unit_part}}}")
        rules.append((table, lines))
    return rules


def _wide_columns(file: FileProfile, person: ColumnProfile) -> list[ColumnProfile]:
    """The numeric columns of a file that looks wide (one column per test): three or more besides the person."""
    numeric = [c for c in file.columns if c.kind in ("number", "integer") and c is not person]
    return numeric if len(numeric) >= 3 else []


def _wide_rule(w: _Writer, file: FileProfile, person: ColumnProfile) -> list[tuple[str, list[str]]]:
    """A wide table as one ``unpivot`` measurement rule: each numeric column's name is its code in a local
    vocabulary, so ``fedomop codes review`` lists the columns and ``codes apply`` maps them."""
    columns, dates = _wide_columns(file, person), _dates(file)
    if not columns or not dates:
        return []
    vocabulary = f"{_source_name(file.path).upper()}_LOCAL"
    w.draft.todos.append(f"{file.path}: wide table; map its columns with fedomop codes review")
    lines = [
        f"    - source: {_source_name(file.path)}  # wide table: one measurement per filled cell of each column",
        f"      person: {_q(person.name)}",
        f"      # TODO: each column's code is its name in {vocabulary} (codes review/apply map them), or write "
        "{code: <LOINC code>, vocabulary: LOINC, unit: <unit>}",
        f"      start: {{date: {_q(dates[0].name)}}}",
        "      unpivot:",
        *(f"        {_q(c.name)}: {{vocabulary: {_q(vocabulary)}}}" for c in columns),
    ]
    return [("measurement", lines)]


def draft_mapping(
    profile: Profile, *, site: str, vocabulary_folder: str, concepts: pl.DataFrame | None = None
) -> Draft:
    """The starting mapping for a profiled extract; ``vocabulary_folder`` is written relative to the mapping."""
    w = _Writer(concepts)
    fhir = [f for f in profile.files if f.format not in ("csv", "parquet")]
    profile = Profile(
        source=profile.source, min_cell=profile.min_cell, files=[f for f in profile.files if f not in fhir]
    )
    found = _person_file(profile)
    w.add(f"# Draft mapping for {site}, written by `fedomop draft-mapping` from a profile of {profile.source}.")
    w.add("# It runs as it is; review every TODO, then `fedomop codes review` for the codes it cannot map.")
    w.add(f"site: {_q(site)}")
    w.add("cdm_source:")
    w.add(f"  cdm_source_name: {_q(site)}")
    w.add(f"  cdm_source_abbreviation: {_q(site[:25])}")
    w.add("vocabulary:")
    w.add(f"  folder: {_q(vocabulary_folder)}")
    w.add("  # source_to_concept_map and extensions: added here by `fedomop codes apply --mapping`")
    w.add("on_unmapped: concept_zero")
    w.add("")
    for file in fhir:
        w.todo(0, f"{file.path} is FHIR: the draft covers tabular files; see mappings/synthea_bulk.yaml for FHIR rules")
    if found is None:
        w.todo(0, "no person file recognised (a file with a birth date column and a unique id column)")
        w.add("sources: {}")
        w.add("tables: {}")
        w.draft.text = "\n".join(w.lines) + "\n"
        return w.draft
    person_file, person_id = found
    visit = _visit_file(profile, person_id.name)
    used = [person_file] + ([visit[0]] if visit else [])
    events: dict[str, list[list[str]]] = {}
    for file in profile.files:
        if file in used:
            continue
        person = _person_column(file, person_id.name)
        rules = _event_rules(w, file, person, visit[1].name if visit else None) if person else []
        if not rules and person is not None:
            rules = _wide_rule(w, file, person)
        if not rules:
            w.todo(0, f"{file.path} is not mapped (no person column with a code column, or a dated wide table)")
            continue
        used.append(file)
        for table, lines in rules:
            events.setdefault(table, []).append(lines)
            w.rule(table, _source_name(file.path))
    w.add("# min_coverage: {measurement: 0.95}  # per table; below it `fedomop map` exits 1")
    _write_sources(w, profile, used)
    w.add("")
    w.add("tables:")
    _write_person(w, person_file, person_id)
    if visit:
        _write_visit(w, visit[0], visit[1], person_id.name)
    for table, table_rules in events.items():
        w.add(f"  {table}:")
        for lines in table_rules:
            w.lines.extend(lines)
            _type_concept(w, 6)
    w.draft.text = "\n".join(w.lines) + "\n"
    return w.draft


def relative_folder(folder: Path, mapping_path: Path) -> str:
    """The vocabulary folder as the mapping file should name it (relative to the mapping's own folder)."""
    return Path(os.path.relpath(Path(folder).resolve(), Path(mapping_path).resolve().parent)).as_posix()
