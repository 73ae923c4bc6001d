"""fedomop only ever replaces what it created in PostgreSQL: --schema / --results-schema, real server, real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.harmonize.fixture_site import make_site
from tests.harmonize.test_exit_codes import fedomop

pytestmark = pytest.mark.postgres


def _tables(url: str, schema: str) -> set[str]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(
            sa.text("select table_name from information_schema.tables where table_schema = :s"), {"s": schema}
        ).scalars()
        names = set(found)
    engine.dispose()
    return names


def _execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))
    engine.dispose()


def _scalar(url: str, sql: str) -> object:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        value = connection.execute(sa.text(sql)).scalar()
    engine.dispose()
    return value


def test_remap_keeps_unrelated_tables_and_splits_cdm_and_results(tmp_path: Path, postgres_url: str) -> None:
    mapping, source = make_site(tmp_path)
    args = ["map", "--mapping", str(mapping), "--source", str(source), "--db", postgres_url]
    assert fedomop(*args).returncode == 0
    _execute(
        postgres_url, "create table public.achilles_results (analysis_id int)", "insert into achilles_results values (1)"
    )
    assert fedomop(*args).returncode == 0  # a re-map into public
    assert _scalar(postgres_url, "select count(*) from public.achilles_results") == 1
    assert _scalar(postgres_url, "select count(*) from public.person") == 3
    # OHDSI's split: CDM tables in cdm, fedomop's run tables in results; public is left alone
    done = fedomop(*args, "--schema", "cdm", "--results-schema", "results")
    assert done.returncode == 0, done.stderr
    cdm, results = _tables(postgres_url, "cdm"), _tables(postgres_url, "results")
    assert {"person", "measurement", "concept"} <= cdm and not {t for t in cdm if t.startswith("fedomop_")}
    assert {"fedomop_run", "fedomop_quarantine", "fedomop_reconciliation"} <= results and "person" not in results
    assert _scalar(postgres_url, "select count(*) from cdm.person") == 3
    assert "achilles_results" in _tables(postgres_url, "public")
    stages = _scalar(
        postgres_url, "select count(*) from information_schema.schemata where schema_name like 'fedomop_stage%'"
    )
    assert stages == 0


def test_schema_with_omop_tables_fedomop_did_not_create_is_refused(tmp_path: Path, postgres_url: str) -> None:
    mapping, source = make_site(tmp_path)
    _execute(
        postgres_url,
        "create schema hospital",
        "create table hospital.person (person_id int)",
        "insert into hospital.person values (42)",
    )
    done = fedomop(
        "map", "--mapping", str(mapping), "--source", str(source), "--db", postgres_url, "--schema", "hospital"
    )
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "schema 'hospital' already holds person" in message and "did not create" in message
    assert _scalar(postgres_url, "select person_id from hospital.person") == 42
    stages = _scalar(
        postgres_url, "select count(*) from information_schema.schemata where schema_name like 'fedomop_stage%'"
    )
    assert stages == 0


def test_unreachable_postgresql_is_one_clear_line_exit_2(tmp_path: Path) -> None:
    mapping, source = make_site(tmp_path)
    url = "postgresql+psycopg://nobody@127.0.0.1:9/site?connect_timeout=2"
    done = fedomop("map", "--mapping", str(mapping), "--source", str(source), "--db", url)
    assert done.returncode == 2
    assert "cannot reach the database" in done.stderr and len(done.stderr.splitlines()) <= 6
