"""Histogram XGBoost: global edges from sketches, and the federated communicator equals pooled training."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import xgboost as xgb

from fedomop.federated.models import xgb_common
from fedomop.federated.models.xgb_histogram import global_edges, site_sketch
from fedomop.federated.xgbserver import federated_server

WORKER = """
import sys, numpy as np
from fedomop.federated.models import xgb_common
from fedomop.federated.models.xgb_histogram import site_train
rank, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
data = np.load(out + f"/site{rank}.npz")
edges = [data[f"e{j}"] for j in range(data["X"].shape[1])]
record = site_train(data["X"], data["y"], edges, server_address=f"127.0.0.1:{port}", world_size=3, rank=rank, rounds=15)
open(out + f"/model{rank}.json", "wb").write(record["0"].numpy().tobytes())
"""


def _site(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=seed * 0.3, size=(n, 4))
    X[rng.random((n, 4)) < 0.1] = np.nan
    p = 1 / (1 + np.exp(-(np.nan_to_num(X[:, 0]) ** 2 - 1 + np.nan_to_num(X[:, 1]))))
    return X, (rng.random(n) < p).astype(float)


def test_sketches_merge_into_pooled_quantiles_without_extremes():
    sites = [_site(s, 400 + 100 * s) for s in range(3)]
    sketches = [site_sketch(X, small_cell=5) for X, _ in sites]
    for (X, _), sketch in zip(sites, sketches, strict=True):
        q = sketch["quantiles"].numpy()
        assert q.shape == (4, 256)
        assert np.all(np.nanmax(q, axis=1) < np.nanmax(X, axis=0))  # no person's maximum is sent
        assert list(sketch["counts"].numpy()) == list((~np.isnan(X)).sum(axis=0))
    edges = global_edges(sketches)
    pooled = np.vstack([X for X, _ in sites])
    for j, cuts in enumerate(edges):
        assert 100 < len(cuts) <= 256 and np.all(np.diff(cuts) > 0)
        median_edge = cuts[np.searchsorted(np.linspace(0, 1, len(cuts)), 0.5)]
        assert abs(np.mean(pooled[:, j][~np.isnan(pooled[:, j])] <= median_edge) - 0.5) < 0.05


def test_feature_seen_in_few_persons_is_withheld():
    X = np.full((50, 2), np.nan)
    X[:, 0] = np.arange(50)
    X[:3, 1] = [1.0, 2.0, 3.0]
    sketch = site_sketch(X, small_cell=5)
    assert list(sketch["counts"].numpy()) == [50, 0]
    assert np.all(np.isnan(sketch["quantiles"].numpy()[1]))


def test_federated_communicator_equals_pooled_training(tmp_path):
    sites = [_site(s, 300 + 50 * s) for s in range(3)]
    edges = global_edges([site_sketch(X, small_cell=5) for X, _ in sites])
    for rank, (X, y) in enumerate(sites):
        np.savez(tmp_path / f"site{rank}.npz", X=X, y=y, **{f"e{j}": e for j, e in enumerate(edges)})
    with federated_server(3, timeout=120) as server:
        command = [sys.executable, "-c", WORKER]
        workers = [subprocess.Popen([*command, str(r), str(server.port), str(tmp_path)]) for r in range(3)]
        assert [w.wait(timeout=180) for w in workers] == [0, 0, 0]
    models = {(tmp_path / f"model{r}.json").read_bytes() for r in range(3)}
    assert len(models) == 1  # every site ends with the same model
    federated = xgb_common.load_booster(models.pop())
    X = np.vstack([X for X, _ in sites])
    y = np.concatenate([y for _, y in sites])
    pooled = xgb_common.load_booster(xgb_common.train_plain(xgb_common.discretise(X, edges), y, 15))
    test_X = xgb_common.discretise(_site(9, 500)[0], edges)
    diff = federated.predict(xgb.DMatrix(test_X)) - pooled.predict(xgb.DMatrix(test_X))
    assert np.max(np.abs(diff)) < 1e-6
