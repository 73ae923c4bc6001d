"""Feature matrices are built in SQL at the site, agree with the generator's truth, and split deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from fedomop.federated.features import build_features, feature_sql
from fedomop.federated.split import test_mask as held_out_mask
from fedomop.federated.study import load_study
from fedomop.federated.testing import DEFAULT_SITES, build_site
from fedomop.harmonize.ground.db import connect
from tests.conftest import SAMPLE_DATA


@pytest.fixture(scope="module")
def study():
    return load_study("bone_metastasis")


def test_features_match_generator_truth(tmp_path, study):
    db = connect(tmp_path / "site.duckdb")
    truth = build_site(db, DEFAULT_SITES[1], seed=3)
    data = build_features(db, study)
    order = np.argsort(truth["person_id"])
    assert list(data.person_id) == list(truth["person_id"][order])
    assert np.array_equal(data.y, truth["outcome"][order].astype(float))
    names = data.feature_names
    assert np.array_equal(data.X[:, names.index("stage")], truth["stage"][order])
    assert np.array_equal(data.X[:, names.index("male")], truth["male"][order].astype(float))
    alp = truth["lab_alp"][order]
    got = data.X[:, names.index("alp")]
    assert np.array_equal(np.isnan(got), np.isnan(alp))
    assert np.allclose(got[~np.isnan(got)], alp[~np.isnan(alp)])
    assert np.array_equal(data.X[:, names.index("bone_protective")], truth["zoledronic"][order].astype(float))
    assert data.X[:, names.index("age")].min() >= 18


@pytest.mark.postgres
def test_postgres_gives_the_same_matrix(tmp_path, postgres_url, study):
    duck, pg = connect(tmp_path / "site.duckdb"), connect(postgres_url)
    build_site(duck, DEFAULT_SITES[3], seed=5)
    build_site(pg, DEFAULT_SITES[3], seed=5)
    a, b = build_features(duck, study), build_features(pg, study)
    assert np.array_equal(a.person_id, b.person_id)
    assert np.array_equal(a.y, b.y)
    assert np.allclose(a.X, b.X, equal_nan=True)
    assert "SELECT" in feature_sql(pg, study)


def test_split_is_deterministic_stratified_and_order_free():
    rng = np.random.default_rng(0)
    ids = rng.choice(10_000_000, size=1000, replace=False)
    y = (rng.random(1000) < 0.2).astype(float)
    mask = held_out_mask(ids, y, seed=2026)
    assert mask.sum() == round(0.3 * (y == 1).sum()) + round(0.3 * (y == 0).sum())
    assert abs(y[mask].mean() - y.mean()) < 0.01
    shuffled = rng.permutation(1000)
    assert np.array_equal(held_out_mask(ids[shuffled], y[shuffled], seed=2026), mask[shuffled])
    assert not np.array_equal(held_out_mask(ids, y, seed=1), mask)
    assert np.array_equal(held_out_mask(ids, y, seed=2026), mask)


def test_sample_sites_match_truth_persons(sample_sites, study):
    """Every harmonized sample site gives, person by person, the features and outcome its truth file holds."""
    import polars as pl

    for site, path in sample_sites.items():
        data = build_features(str(path), study)
        ids = connect(path, read_only=True).query("SELECT person_id, person_source_value FROM person")
        truth = pl.read_csv(
            SAMPLE_DATA / site / "truth_persons.csv", schema_overrides={"person_source_value": pl.String}
        )
        frame = pl.DataFrame({"person_id": data.person_id, "label": data.y}).with_columns(
            *(pl.Series(name, data.X[:, i]) for i, name in enumerate(data.feature_names))
        )
        joined = frame.join(ids, on="person_id").join(truth, on="person_source_value")
        assert joined.height == truth.height == data.n, site
        assert (joined["label"] == joined["outcome"]).all(), site
        for ours, theirs in [("stage", "stage"), ("alp", "alp"), ("calcium", "calcium"), ("haemoglobin", "hemoglobin")]:
            a, b = joined[ours].to_numpy(), joined[theirs].cast(pl.Float64).to_numpy()
            assert np.allclose(a, b, equal_nan=True, rtol=1e-6, atol=1e-6), (site, ours)
        assert (joined["bone_protective"] == joined["bone_protective_right"]).all(), site
        assert (joined["age"] - joined["age_at_diagnosis"]).abs().max() <= 1.0, site
