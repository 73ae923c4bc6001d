"""The hand-written DuckDB SQL reference ETL (benchmarks/reference_sql_etl.py) gives the same OMOP rows as
``fedomop map`` on a slice of sample site A, broken rows included: otherwise its timings compare unlike work."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import duckdb
import polars as pl

from fedomop.harmonize.run.run import run_mapping

REPO = Path(__file__).resolve().parents[2]
SITE_A = REPO / "sample_data" / "site_a"
SCRIPT = REPO / "benchmarks" / "reference_sql_etl.py"


def _slice_site(out: Path, persons: int = 300) -> None:
    """The first ``persons`` patients with all their records, and every record of a person not in the extract."""
    patients = pl.read_csv(SITE_A / "patients.csv", infer_schema=False)
    kept = patients.head(persons).get_column("patient_id")
    everyone = patients.get_column("patient_id")
    out.mkdir()
    patients.head(persons).write_csv(out / "patients.csv")
    for name in ("encounters", "conditions", "medications", "procedures", "observations"):
        rows = pl.read_csv(SITE_A / f"{name}.csv", infer_schema=False)
        pick = pl.col("patient_id").is_in(kept.implode()) | ~pl.col("patient_id").is_in(everyone.implode())
        rows.filter(pick).write_csv(out / f"{name}.csv")
    (out / "source_to_concept_map.csv").write_bytes((SITE_A / "source_to_concept_map.csv").read_bytes())


def _reference_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference_sql_etl", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_sql_gives_the_same_omop_rows(tmp_path: Path) -> None:
    site = tmp_path / "site_a"
    _slice_site(site)
    mapped = tmp_path / "mapped.duckdb"
    report = run_mapping(REPO / "mappings" / "site_a.yaml", site, mapped, indexes=False)
    assert report.records_quarantined > 0  # the slice keeps broken rows, which both must leave out
    reference = _reference_module()
    built = tmp_path / "ref.duckdb"
    reference.run(site, built, reference.VOCABULARY, indexes=False)
    found = reference.compare(built, mapped)
    assert {table: (only_ref, only_map) for table, (_, only_ref, only_map) in found.items()} == {
        table: (0, 0) for table in reference.NATURAL
    }
    built_rows = {table: rows for table, (rows, _, _) in found.items() if table in report.loaded}
    assert built_rows == {table: rows for table, rows in report.loaded.items() if table in reference.NATURAL}
    # the check is not vacuous: one changed value in fedomop's database is found
    with duckdb.connect(str(mapped)) as con:
        con.execute("UPDATE measurement SET value_as_number = value_as_number + 1 WHERE measurement_id = 1")
    assert reference.compare(built, mapped)["measurement"][1:] == (1, 1)
