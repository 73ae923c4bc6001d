"""Training reads site databases from PostgreSQL URLs as from DuckDB paths: the CLI passes URLs on unmangled,
each URL is its own site (identity from cdm_source), and one site given twice is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedomop.federated.errors import StudyError
from fedomop.federated.runner import site_list
from tests.conftest import MAPPINGS, REPO, SAMPLE_DATA

pytestmark = pytest.mark.postgres
STUDY = REPO / "federated" / "studies" / "bone_metastasis.yaml"
SITES = ("site_a", "site_b", "site_c", "site_d")


@pytest.fixture(scope="module")
def postgres_sites(postgres_server: object) -> Iterator[dict[str, str]]:
    """The four sample sites mapped by the real engine into four databases of one PostgreSQL server."""
    import psycopg

    from fedomop.harmonize.run import run_mapping

    admin = postgres_server.get_uri()  # type: ignore[attr-defined]
    urls: dict[str, str] = {}
    for site in SITES:
        name = f"{site}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        url = postgres_server.get_uri(database=name).replace("postgresql://", "postgresql+psycopg://", 1)  # type: ignore[attr-defined]
        run_mapping(MAPPINGS / f"{site}.yaml", SAMPLE_DATA / site, url)
        urls[site] = url
    yield urls
    with psycopg.connect(admin, autocommit=True) as connection:
        for url in urls.values():
            connection.execute(f'DROP DATABASE IF EXISTS "{url.split("/")[-1].split("?")[0]}" WITH (FORCE)')


def test_each_url_is_its_own_site_named_by_cdm_source(postgres_sites: dict[str, str]) -> None:
    sites = site_list(list(postgres_sites.values()))
    assert [s.name for s in sites] == list(SITES)  # cdm_source_abbreviation of each sample mapping
    assert [s.db for s in sites] == list(postgres_sites.values())
    with pytest.raises(StudyError, match="two databases are the same site 'site_b'"):
        site_list([postgres_sites["site_a"], postgres_sites["site_b"], postgres_sites["site_b"]])


def test_cli_train_takes_postgresql_urls_unmangled(postgres_sites: dict[str, str], tmp_path: Path) -> None:
    """The CLI reaches the databases through the URLs (it reads cdm_source and refuses the repeated site)."""
    url = postgres_sites["site_c"]
    args = ["train", "--study", str(STUDY), "--out", str(tmp_path), "--sites", url, "--sites", url]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"}
    done = subprocess.run(
        [sys.executable, "-m", "fedomop", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert "Traceback" not in done.stderr
    assert done.returncode == 2, done.stderr
    assert "two databases are the same site 'site_c'" in " ".join(done.stderr.split())


@pytest.mark.slow
def test_simulate_on_four_postgresql_sites_trains_on_four_sites(postgres_sites: dict[str, str], tmp_path: Path) -> None:
    from fedomop.federated.runner import simulate

    outcome = simulate(STUDY, list(postgres_sites.values()), out=tmp_path / "pg", model="xgboost-bagging")
    assert set(outcome["local_summary"]) == set(SITES)
    result = json.loads((tmp_path / "pg" / "result.json").read_text())
    assert set(result["local_summary"]) == set(SITES)
    assert outcome["federated_summary"]["auroc"] > 0.5
