"""A new site none of the mappings know, derived from the third-party Eunomia Synthea27Nj CDM.

The extract is the CDM turned back into a hospital-style export with its own column names, a semicolon delimiter
and day-first dates: the codes (SNOMED, LOINC, RxNorm), values and dates are Eunomia's, so the expected results
come from Eunomia's own tables, not from fedomop. The site vocabulary is the bundled sample vocabulary plus
Eunomia's concepts and relationships (composed in the test, not copied into the package).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from fedomop.harmonize.vocabulary.cdm_io import read_cdm_csv
from tests.conftest import EUNOMIA, SAMPLE_DATA

# a two-file lab site (patients.csv: pid, born; labs.csv) for the small mapping tests: sources and person rule
LAB_SITE = """sources:
  patients: {format: csv, files: patients.csv}
  labs: {format: csv, files: labs.csv}
tables:
  person:
    - source: patients
      id: pid
      start: {date: born}
"""
_VISIT_SETTING = {9201: "inpatient", 9202: "outpatient", 9203: "emergency"}


def _eunomia(table: str) -> pl.DataFrame:
    return read_cdm_csv(EUNOMIA / f"{table.upper()}.csv", table)


def _day_first(column: str) -> pl.Expr:
    return pl.col(column).dt.strftime("%d/%m/%Y")


def write_extract(folder: Path) -> dict[str, int]:
    """Write the new site's extract into ``folder``; returns rows per file."""
    folder.mkdir(parents=True, exist_ok=True)
    person = _eunomia("person")
    death = _eunomia("death")
    keys = person.select("person_id", pl.col("person_source_value").alias("pat_key"))
    people = (
        person.join(death.select("person_id", "death_date"), on="person_id", how="left")
        .join(keys, on="person_id")
        .select(
            "pat_key",
            pl.col("gender_source_value").alias("gender"),
            pl.date("year_of_birth", "month_of_birth", "day_of_birth").dt.strftime("%d/%m/%Y").alias("date_of_birth"),
            _day_first("death_date").alias("died_on"),
        )
    )
    stays = (
        _eunomia("visit_occurrence")
        .join(keys, on="person_id")
        .select(
            pl.col("visit_occurrence_id").cast(pl.String).alias("stay_no"),
            "pat_key",
            pl.col("visit_concept_id").replace_strict(_VISIT_SETTING, default="other").alias("setting"),
            _day_first("visit_start_date").alias("admitted"),
            _day_first("visit_end_date").alias("discharged"),
        )
    )
    diagnoses = (
        _eunomia("condition_occurrence")
        .join(keys, on="person_id")
        .select(
            "pat_key",
            pl.col("visit_occurrence_id").cast(pl.String).alias("stay_no"),
            pl.col("condition_source_value").alias("dx"),
            _day_first("condition_start_date").alias("dx_date"),
        )
    )
    labs = (
        _eunomia("measurement")
        .join(keys, on="person_id")
        .select(
            "pat_key",
            pl.col("visit_occurrence_id").cast(pl.String).alias("stay_no"),
            pl.col("measurement_source_value").alias("test_code"),
            pl.col("value_as_number").alias("result"),
            pl.col("unit_source_value").alias("result_unit"),
            _day_first("measurement_date").alias("drawn_on"),
        )
    )
    frames = {"people": people, "stays": stays, "diagnoses": diagnoses, "labs": labs}
    for name, frame in frames.items():
        frame.write_csv(folder / f"{name}.csv", separator=";")
    return {name: frame.height for name, frame in frames.items()}


def write_vocabulary(folder: Path) -> None:
    """The bundled sample vocabulary composed with Eunomia's (concepts de-duplicated by id)."""
    folder.mkdir(parents=True, exist_ok=True)
    for table in ("concept", "concept_relationship", "vocabulary", "domain", "concept_class", "relationship"):
        parts = [read_cdm_csv(SAMPLE_DATA / "vocabulary" / f"{table.upper()}.csv", table)]
        if (EUNOMIA / f"{table.upper()}.csv").exists():
            parts.append(_eunomia(table))
        frame = pl.concat(parts)
        key = {"concept": "concept_id", "vocabulary": "vocabulary_id", "domain": "domain_id"}.get(table)
        frame = (
            frame.unique(subset=key, keep="first", maintain_order=True) if key else frame.unique(maintain_order=True)
        )
        frame.write_csv(folder / f"{table.upper()}.csv", separator="\t")


@pytest.fixture(scope="session")
def new_site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("new_site")
    write_extract(root / "extract")
    write_vocabulary(root / "vocabulary")
    return {"root": root, "extract": root / "extract", "vocabulary": root / "vocabulary"}
