"""The four sample sites map to exactly their ground truth: concepts, standard units/values, dates, quarantine.

Each site's ``ground_truth.csv`` (written by the sample-data generator) lists, per source record, the OMOP
table it must land in with its concept ids, value in the standard unit and date - or ``quarantine`` with a
reason. Every record must be accounted for, and nothing else may be loaded.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from fedomop.harmonize.run import run_mapping
from tests.conftest import MAPPINGS, SAMPLE_DATA

SITES = ("site_a", "site_b", "site_c", "site_d")
# (table, concept, source concept, value, unit, date) as SQL over each clinical table
FACTS = {
    "person": (
        "gender_concept_id",
        "gender_source_concept_id",
        "null",
        "null",
        "make_date(year_of_birth, month_of_birth, day_of_birth)",
        "person_id",
    ),
    "death": ("cause_concept_id", "cause_source_concept_id", "null", "null", "death_date", "person_id"),
    "visit_occurrence": (
        "visit_concept_id",
        "visit_source_concept_id",
        "null",
        "null",
        "visit_start_date",
        "visit_occurrence_id",
    ),
    "condition_occurrence": (
        "condition_concept_id",
        "condition_source_concept_id",
        "null",
        "null",
        "condition_start_date",
        "condition_occurrence_id",
    ),
    "drug_exposure": (
        "drug_concept_id",
        "drug_source_concept_id",
        "null",
        "null",
        "drug_exposure_start_date",
        "drug_exposure_id",
    ),
    "procedure_occurrence": (
        "procedure_concept_id",
        "procedure_source_concept_id",
        "null",
        "null",
        "procedure_date",
        "procedure_occurrence_id",
    ),
    "measurement": (
        "measurement_concept_id",
        "measurement_source_concept_id",
        "value_as_number",
        "unit_concept_id",
        "measurement_date",
        "measurement_id",
    ),
}
# ground-truth reason -> what the quarantine says (a FHIR reader rejects an impossible date at read time)
REASONS = {
    "implausible_value": r"^implausible value",
    "invalid_date": r"^bad date|not a real calendar date",
    "unknown_person": r"^unknown person",
    "missing_value": r"^missing value",
}
KEY = ["source_file", "source_row", "table"]


def _facts(db: Path) -> pl.DataFrame:
    parts = []
    for table, (concept, source_concept, value, unit, date, key) in FACTS.items():
        parts.append(
            f"select l.source_file, l.source_row, '{table}' as \"table\", coalesce({concept}, 0) as concept_id, "
            f"coalesce({source_concept}, 0) as source_concept_id, cast({value} as double) as value_as_number, "
            f"cast({unit} as bigint) as unit_concept_id, cast({date} as date) as event_date "
            f"from {table} t join fedomop_lineage l on l.omop_table = '{table}' and l.omop_id = t.{key}"
        )
    with duckdb.connect(str(db), read_only=True) as con:
        return pl.from_arrow(con.sql(" union all ".join(parts)).to_arrow_table())  # type: ignore[return-value]


def _truth(site: str) -> pl.DataFrame:
    return pl.read_csv(SAMPLE_DATA / site / "ground_truth.csv", infer_schema=False).with_columns(
        pl.col("expected_table").alias("table"),
        pl.col("concept_id", "source_concept_id").cast(pl.Int64),
        pl.col("value_as_number").cast(pl.Float64),
        pl.col("unit_concept_id").cast(pl.Int64),
        pl.col("event_date").str.to_date("%Y-%m-%d", strict=False),
    )


@pytest.fixture(scope="module", params=SITES)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, object]:
    name = request.param
    if not (SAMPLE_DATA / name / "ground_truth.csv").exists():
        pytest.fail(f"sample data for {name} is missing; run `fedomop sample-data`")
    db = tmp_path_factory.mktemp(name) / f"{name}.duckdb"
    report = run_mapping(MAPPINGS / f"{name}.yaml", SAMPLE_DATA / name, db)
    return name, db, report


def test_loaded_records_equal_the_ground_truth(site) -> None:
    name, db, _ = site
    truth = _truth(name).filter(pl.col("table") != "quarantine")
    facts = _facts(db)
    assert facts.select(KEY).is_duplicated().sum() == 0
    missing = truth.join(facts, on=KEY, how="anti")
    extra = facts.join(truth, on=KEY, how="anti")
    assert missing.is_empty(), f"{name}: {missing.height} expected records not loaded, e.g. {missing.head(3).rows()}"
    assert extra.is_empty(), f"{name}: {extra.height} records loaded that the truth does not expect: {extra.head(3)}"
    both = truth.join(facts, on=KEY, suffix="_got")
    for column in ("concept_id", "source_concept_id", "event_date"):
        wrong = both.filter(pl.col(column).ne_missing(pl.col(f"{column}_got")))
        assert wrong.is_empty(), f"{name} {column}: {wrong.select(*KEY, column, f'{column}_got').head(5)}"
    measured = both.filter(pl.col("table") == "measurement")
    wrong_unit = measured.filter(pl.col("unit_concept_id").fill_null(0) != pl.col("unit_concept_id_got").fill_null(0))
    assert wrong_unit.is_empty(), wrong_unit.select(*KEY, "unit_concept_id", "unit_concept_id_got").head(5)
    off = measured.filter((pl.col("value_as_number") - pl.col("value_as_number_got")).abs() > 1e-6)
    assert off.is_empty(), off.select(*KEY, "value_as_number", "value_as_number_got").head(5)
    assert measured.filter(pl.col("value_as_number").is_null() != pl.col("value_as_number_got").is_null()).is_empty()


def test_quarantined_records_equal_the_ground_truth(site) -> None:
    name, db, report = site
    expected = _truth(name).filter(pl.col("table") == "quarantine")
    with duckdb.connect(str(db), read_only=True) as con:
        got = pl.from_arrow(con.sql("select source_file, source_row, reason from fedomop_quarantine").to_arrow_table())
    assert got.select("source_file", "source_row").n_unique() == expected.height
    for row in expected.iter_rows(named=True):
        reasons = got.filter(
            (pl.col("source_file") == row["source_file"]) & (pl.col("source_row") == row["source_row"])
        )
        assert reasons.height, f"{name}: {row['source_file']} {row['source_row']} was not quarantined"
        assert reasons.get_column("reason").str.contains(REASONS[row["reason"]]).any(), reasons.rows()
    assert report.balanced


def test_every_source_record_is_accounted_for(site) -> None:
    name, db, report = site
    truth = _truth(name)
    with duckdb.connect(str(db), read_only=True) as con:
        totals = con.execute(
            "select sum(source_count), sum(loaded), sum(quarantined), bool_and(balanced) "
            "from fedomop_reconciliation where omop_table = '*' and source <> 'observation_components'"
        ).fetchone()  # observation_components reads Observation resources a second time (one record per component)
        components = con.execute(
            "select bool_and(balanced) from fedomop_reconciliation where source = 'observation_components'"
        ).fetchone()
    records = truth.select("source_file", "source_row").n_unique()
    assert totals == (
        records,
        records - truth.filter(pl.col("table") == "quarantine").height,
        truth.filter(pl.col("table") == "quarantine").height,
        True,
    )
    assert components in ((None,), (True,))
    assert report.records_read == records + report.sources.get("observation_components", 0)
