"""The OHDSI Data Quality Dashboard check catalogue, read from its four CSVs.

``data/`` holds verbatim copies of DataQualityDashboard ``inst/csv`` for CDM v5.4:
the 27 check types (Kahn context/category/subcategory, severity, which rows they
apply to) and the per-table, per-field and per-concept parameters and thresholds.
The checks in :mod:`fedomop.harmonize.validate.checks` read everything from here, so a
threshold is changed by editing a CSV row, never the code.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fedomop.harmonize.ground.errors import ValidationError

CHECK_DESCRIPTIONS_CSV = "OMOP_CDMv5.4_Check_Descriptions.csv"
TABLE_LEVEL_CSV = "OMOP_CDMv5.4_Table_Level.csv"
FIELD_LEVEL_CSV = "OMOP_CDMv5.4_Field_Level.csv"
CONCEPT_LEVEL_CSV = "OMOP_CDMv5.4_Concept_Level.csv"

Row = dict[str, str]
_CONDITION = re.compile(r"^\s*(\w+)\s*(==|!=)\s*'([^']*)'\s*$")


@dataclass(frozen=True)
class CheckType:
    """One check type: what it measures, its Kahn classification and its severity."""

    name: str
    level: str  # TABLE | FIELD | CONCEPT (or a site's own level name)
    description: str
    kahn_context: str
    kahn_category: str
    kahn_subcategory: str
    severity: str  # fatal | convention | characterization
    evaluation_filter: str = ""

    def applies_to(self, row: Row) -> bool:
        """Evaluate the catalogue's ``evaluationFilter`` (e.g. ``isForeignKey=='Yes' & fkDomain!=''``) on a row."""
        return all(_condition_holds(part, row, self.name) for part in self.evaluation_filter.split("&") if part.strip())


def _condition_holds(condition: str, row: Row, check: str) -> bool:
    match = _CONDITION.match(condition)
    if not match:
        raise ValidationError(
            f"cannot read evaluation filter {condition!r}",
            where=f"{CHECK_DESCRIPTIONS_CSV} check {check}",
            fix="write filters as column=='value' or column!='' joined by &",
        )
    column, operator, value = match.groups()
    actual = (row.get(column) or "").strip()
    return actual == value if operator == "==" else actual != value


@dataclass(frozen=True)
class Catalogue:
    """The whole catalogue: check types by name and the parameter rows of each level."""

    check_types: dict[str, CheckType]
    table_rows: tuple[Row, ...]
    field_rows: tuple[Row, ...]
    concept_rows: tuple[Row, ...]

    def rows_for(self, check: CheckType) -> list[Row]:
        """The parameter rows a check type runs on (its level's rows that pass its evaluation filter)."""
        rows = {"TABLE": self.table_rows, "FIELD": self.field_rows, "CONCEPT": self.concept_rows}.get(check.level, ())
        return [row for row in rows if check.applies_to(row)]


def _read(path: Path) -> tuple[Row, ...]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return tuple({k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(handle))


def _check_types(rows: tuple[Row, ...]) -> dict[str, CheckType]:
    return {
        row["checkName"]: CheckType(
            name=row["checkName"],
            level=row["checkLevel"].upper(),
            description=" ".join(row["checkDescription"].split()),
            kahn_context=row["kahnContext"],
            kahn_category=row["kahnCategory"],
            kahn_subcategory=row["kahnSubcategory"],
            severity=row["severity"],
            evaluation_filter=row["evaluationFilter"],
        )
        for row in rows
    }


def bundled_catalogue_dir() -> Path:
    return Path(str(resources.files("fedomop.harmonize.validate") / "data"))


def load_catalogue_from(folder: Path) -> Catalogue:
    """Read the four DQD CSVs from a folder (the bundled copy, or a site's edited thresholds)."""
    folder = Path(folder)
    missing = [
        name
        for name in (CHECK_DESCRIPTIONS_CSV, TABLE_LEVEL_CSV, FIELD_LEVEL_CSV, CONCEPT_LEVEL_CSV)
        if not (folder / name).is_file()
    ]
    if missing:
        raise ValidationError(
            f"data-quality catalogue file(s) missing: {', '.join(missing)}",
            where=str(folder),
            fix="copy the four OMOP_CDMv5.4_*.csv files of the DataQualityDashboard catalogue into this folder",
        )
    return Catalogue(
        check_types=_check_types(_read(folder / CHECK_DESCRIPTIONS_CSV)),
        table_rows=_read(folder / TABLE_LEVEL_CSV),
        field_rows=_read(folder / FIELD_LEVEL_CSV),
        concept_rows=_read(folder / CONCEPT_LEVEL_CSV),
    )


@lru_cache(maxsize=1)
def load_catalogue() -> Catalogue:
    """The bundled catalogue (cached: it does not change at run time)."""
    return load_catalogue_from(bundled_catalogue_dir())


@lru_cache(maxsize=1)
def check_semantics() -> dict[str, Row]:
    """Per DQD check type: the official template it follows, its numerator, denominator, NULL handling,
    not-applicable rule and a short "what to do" when it fails (harmonize/validate/data/dqd_check_semantics.csv)."""
    return {row["check_name"]: row for row in _read(bundled_catalogue_dir() / "dqd_check_semantics.csv")}
