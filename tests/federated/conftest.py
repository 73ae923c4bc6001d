"""Site databases for the federated tests: synthetic sites with a known risk, and the harmonized sample sites."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedomop.federated.testing import build_sites
from tests.conftest import MAPPINGS, SAMPLE_DATA

SAMPLE_SITES = ("site_a", "site_b", "site_c", "site_d")


@pytest.fixture(scope="session")
def synthetic_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_sites(tmp_path_factory.mktemp("federated_sites"))


@pytest.fixture(scope="session")
def sample_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four sample sites harmonized into OMOP DuckDB files by the real mapping engine."""
    from fedomop.harmonize.run import run_mapping

    folder = tmp_path_factory.mktemp("sample_sites")
    paths = {}
    for site in SAMPLE_SITES:
        path = folder / f"{site}.duckdb"
        run_mapping(MAPPINGS / f"{site}.yaml", SAMPLE_DATA / site, str(path), vocabulary=None)
        paths[site] = path
    return paths
