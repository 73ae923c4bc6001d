"""Held-out metrics against hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np

from fedomop.federated.metrics import binary_metrics, expected_calibration_error, weighted_summary


def test_perfect_ranking_and_calibration():
    y = np.array([0, 0, 1, 1] * 50, dtype=float)
    p = np.where(y == 1, 0.9, 0.1)
    m = binary_metrics(y, p)
    assert m["auroc"] == 1.0 and m["auprc"] == 1.0
    assert math.isclose(m["brier"], 0.01)
    assert math.isclose(m["ece"], 0.1)


def test_calibrated_scores_have_slope_one():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 20_000)
    y = (rng.random(20_000) < p).astype(float)
    m = binary_metrics(y, p)
    assert abs(m["cal_slope"] - 1) < 0.08 and abs(m["cal_intercept"]) < 0.08
    assert expected_calibration_error(y, p) < 0.02


def test_one_class_gives_nan_not_a_crash():
    m = binary_metrics(np.zeros(10), np.full(10, 0.2))
    assert math.isnan(m["auroc"]) and math.isclose(m["brier"], 0.04)


def test_weighted_summary_weights_by_size_and_skips_nan():
    per_site = {"a": {"auroc": 0.6, "brier": 0.1}, "b": {"auroc": 0.9, "brier": float("nan")}}
    summary = weighted_summary(per_site, {"a": 100, "b": 300})
    assert math.isclose(summary["auroc"], 0.825)
    assert math.isclose(summary["brier"], 0.1)
