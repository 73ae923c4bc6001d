"""Fixtures for the validation tests: Eunomia loaded once per session, a seeded copy, their check runs."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.validate.checks import CheckResult, run_checks
from fedomop.harmonize.vocabulary.cdm_io import load_cdm_folder
from tests.conftest import EUNOMIA
from tests.validate.seeds import seed

TODAY = dt.date(2026, 1, 1)  # fixed, so "plausible until today + 1 day" gives the same answer every run


def load_eunomia(db: Database) -> None:
    """Eunomia into a CDM without key constraints (tests seed duplicate keys and orphans)."""
    create_cdm(db.engine, constraints="none")
    load_cdm_folder(db, EUNOMIA)


def by_id(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.check_id: r for r in results}


@pytest.fixture(scope="session")
def eunomia_duckdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not EUNOMIA.is_dir():
        pytest.fail(f"Eunomia CDM not found at {EUNOMIA}; set FEDOMOP_SHARED to the shared/ folder")
    path = tmp_path_factory.mktemp("eunomia") / "eunomia.duckdb"
    db = connect(path)
    load_eunomia(db)
    db.dispose()
    return path


@pytest.fixture(scope="session")
def seeded_duckdb(eunomia_duckdb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seeded") / "seeded.duckdb"
    shutil.copy(eunomia_duckdb, path)
    db = connect(path)
    seed(db)
    db.dispose()
    return path


@pytest.fixture(scope="session")
def clean_results(eunomia_duckdb: Path) -> dict[str, CheckResult]:
    db = connect(eunomia_duckdb, read_only=True)
    try:
        return by_id(run_checks(db, today=TODAY).results)
    finally:
        db.dispose()


@pytest.fixture(scope="session")
def seeded_results(seeded_duckdb: Path) -> dict[str, CheckResult]:
    db = connect(seeded_duckdb, read_only=True)
    try:
        return by_id(run_checks(db, today=TODAY).results)
    finally:
        db.dispose()
