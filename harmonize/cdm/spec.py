"""Parse the official OHDSI field- and table-level CSVs into typed records.

The CSVs shipped in ``harmonize/cdm/data`` are verbatim copies of
OHDSI/CommonDataModel ``inst/csv`` for v5.4; everything schema-shaped in
fedomop (SQLAlchemy tables, pandera schemas, data-quality checks) derives from
them so that there is exactly one source of truth.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fedomop.harmonize.ground.errors import SchemaError

FIELD_LEVEL_CSV = "OMOP_CDMv5.4_Field_Level.csv"
TABLE_LEVEL_CSV = "OMOP_CDMv5.4_Table_Level.csv"

_VARCHAR = re.compile(r"^varchar\((\d+|MAX)\)$", re.IGNORECASE)
_SCALAR_TYPES = {"integer", "float", "date", "datetime"}


@dataclass(frozen=True)
class FieldSpec:
    """One row of the field-level spec: a column of an OMOP table."""

    table: str
    name: str
    datatype: str  # normalised: integer | float | date | datetime | varchar
    length: int | None  # varchar length; None for varchar(MAX) and non-text types
    required: bool
    primary_key: bool
    fk_table: str | None  # lower-case OMOP table name
    fk_field: str | None
    fk_domain: str | None
    fk_class: str | None
    user_guidance: str = ""

    @property
    def is_concept_id(self) -> bool:
        return self.fk_table == "concept"


@dataclass(frozen=True)
class TableSpec:
    """One OMOP table: its schema group (CDM, VOCAB, RESULTS) and fields in spec order."""

    name: str
    schema: str
    required: bool
    description: str
    fields: tuple[FieldSpec, ...] = field(default_factory=tuple)

    @property
    def primary_key(self) -> FieldSpec | None:
        return next((f for f in self.fields if f.primary_key), None)

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise SchemaError(
            f"table {self.name!r} has no field {name!r}",
            fix=f"use one of: {', '.join(f.name for f in self.fields)}",
        )

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.fields]


@dataclass(frozen=True)
class CdmSpec:
    """The whole CDM: tables by name, in the spec's order."""

    version: str
    tables: dict[str, TableSpec]

    def table(self, name: str) -> TableSpec:
        try:
            return self.tables[name.lower()]
        except KeyError:
            raise SchemaError(
                f"OMOP CDM {self.version} has no table {name!r}",
                fix=f"use one of: {', '.join(self.tables)}",
            ) from None

    def tables_in(self, schema: str) -> list[TableSpec]:
        return [t for t in self.tables.values() if t.schema == schema]


def _na(value: str | None) -> str | None:
    value = (value or "").strip()
    return None if value in ("", "NA") else value


def _yes(value: str | None, where: str) -> bool:
    value = (value or "").strip()
    if value not in ("Yes", "No"):
        raise SchemaError(f"expected Yes or No, got {value!r}", where=where, fix="correct the spec CSV")
    return value == "Yes"


def _field_name(raw: str) -> str:
    """The column name. The spec writes the reserved word note_nlp.offset as ``"offset"`` (DDL quoting);
    the column itself is ``offset`` and SQLAlchemy quotes it where a dialect needs that."""
    return raw.strip().strip('"').lower()


def _datatype(raw: str, where: str) -> tuple[str, int | None]:
    raw = raw.strip()
    if raw.lower() in _SCALAR_TYPES:
        return raw.lower(), None
    match = _VARCHAR.match(raw)
    if match:
        size = match.group(1)
        return "varchar", None if size.upper() == "MAX" else int(size)
    raise SchemaError(
        f"unknown cdmDatatype {raw!r}", where=where, fix="use integer, float, date, datetime or varchar(n)"
    )


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _parse_fields(rows: list[dict[str, str]], path: Path) -> dict[str, list[FieldSpec]]:
    by_table: dict[str, list[FieldSpec]] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{path.name} row {line} ({row.get('cdmTableName')}.{row.get('cdmFieldName')})"
        datatype, length = _datatype(row["cdmDatatype"], where)
        fk_table = _na(row["fkTableName"])
        spec = FieldSpec(
            table=row["cdmTableName"].strip().lower(),
            name=_field_name(row["cdmFieldName"]),
            datatype=datatype,
            length=length,
            required=_yes(row["isRequired"], where),
            primary_key=_yes(row["isPrimaryKey"], where),
            fk_table=fk_table.lower() if fk_table and _yes(row["isForeignKey"], where) else None,
            fk_field=(_na(row["fkFieldName"]) or "").lower() or None,
            fk_domain=_na(row["fkDomain"]),
            fk_class=_na(row["fkClass"]),
            user_guidance=row.get("userGuidance") or "",
        )
        by_table.setdefault(spec.table, []).append(spec)
    return by_table


def load_spec_from(field_csv: Path, table_csv: Path, version: str = "5.4") -> CdmSpec:
    """Load a CDM spec from explicit CSV paths (used for the bundled copy and in tests)."""
    fields = _parse_fields(_read_csv(field_csv), field_csv)
    tables: dict[str, TableSpec] = {}
    for line, row in enumerate(_read_csv(table_csv), start=2):
        name = row["cdmTableName"].strip().lower()
        if name not in fields:
            raise SchemaError(f"table {name!r} has no fields", where=f"{table_csv.name} row {line}")
        tables[name] = TableSpec(
            name=name,
            schema=row["schema"].strip(),
            required=_yes(row["isRequired"], f"{table_csv.name} row {line}"),
            description=row.get("tableDescription") or "",
            fields=tuple(fields[name]),
        )
    missing = sorted(set(fields) - set(tables))
    if missing:
        raise SchemaError(f"fields for tables not in the table-level CSV: {missing}", where=field_csv.name)
    return CdmSpec(version=version, tables=tables)


def bundled_spec_dir() -> Path:
    return Path(str(resources.files("fedomop.harmonize.cdm") / "data"))


@lru_cache(maxsize=1)
def load_spec() -> CdmSpec:
    """The bundled OMOP CDM v5.4 spec (cached: it never changes at run time)."""
    data = bundled_spec_dir()
    return load_spec_from(data / FIELD_LEVEL_CSV, data / TABLE_LEVEL_CSV)
