"""DuckDB and PostgreSQL give the same check results on the same (seeded) data."""

from __future__ import annotations

import pytest

from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.validate.checks import run_checks
from fedomop.harmonize.validate.report import ValidateOptions, validate_database
from tests.validate.conftest import TODAY, by_id, load_eunomia
from tests.validate.seeds import seed

pytestmark = pytest.mark.postgres


def outcome(result):
    return (result.status, result.num_violated_rows, result.num_denominator_rows)


def test_duckdb_and_postgresql_agree_on_every_check(postgres_url, seeded_results, tmp_path):
    pg = connect(postgres_url)
    load_eunomia(pg)
    seed(pg)
    pg_results = by_id(run_checks(pg, today=TODAY).results)
    assert set(pg_results) == set(seeded_results)
    assert not [r.check_id for r in pg_results.values() if r.status == "error"]
    differing = {
        check_id: (outcome(seeded_results[check_id]), outcome(r))
        for check_id, r in pg_results.items()
        if outcome(r) != outcome(seeded_results[check_id])
    }
    assert differing == {}
    assert pg_results["isPrimaryKey.person.person_id"].status == "fail"
    # and the whole report builds on PostgreSQL (profile SQL: quantiles, histograms, per-year counts)
    report = validate_database(pg, tmp_path, ValidateOptions(sample_rows=500, checks=("cdmTable",), today=TODAY))
    assert report.data["persons"] == 29 and report.data["database"].startswith("postgresql:")
    assert report.data["measurements"] and report.data["records_per_year"]["measurement"]
    pg.dispose()
