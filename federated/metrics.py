"""Held-out metrics computed at each site, and their pooled (test-size weighted) summary.

Only these scalars leave a site: AUROC, AUPRC (average precision), Brier score,
calibration intercept and slope (logistic recalibration of the outcome on the
model's logit, Cox 1958) and expected calibration error over 10 equal-width bins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

METRIC_NAMES = ("auroc", "auprc", "brier", "cal_intercept", "cal_slope", "ece")
_EPS = 1e-6


def _calibration(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression  # lazy, like xgboost: only evaluating sites need it

    logit = np.log(np.clip(p, _EPS, 1 - _EPS) / np.clip(1 - p, _EPS, 1 - _EPS)).reshape(-1, 1)
    model = LogisticRegression(C=1e6, max_iter=1000).fit(logit, y)
    return float(model.intercept_[0]), float(model.coef_[0][0])


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(float(y[members].mean()) - float(p[members].mean()))
    return total / max(len(y), 1)


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """All held-out metrics for one site; NaN where a metric is undefined (one class only)."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    both_classes = 0 < y.sum() < len(y)
    out = {
        "auroc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "auprc": float(average_precision_score(y, p)) if both_classes else float("nan"),
        "brier": float(brier_score_loss(y, p)) if len(y) else float("nan"),
        "ece": expected_calibration_error(y, p),
    }
    out["cal_intercept"], out["cal_slope"] = _calibration(y, p) if both_classes else (float("nan"), float("nan"))
    return {name: out[name] for name in METRIC_NAMES}


def weighted_summary(per_site: Mapping[str, Mapping[str, float]], sizes: Mapping[str, int]) -> dict[str, float]:
    """Each metric averaged over sites, weighted by held-out size (skipping sites where it is undefined)."""
    summary: dict[str, float] = {}
    for name in METRIC_NAMES:
        pairs = [(per_site[s][name], sizes[s]) for s in per_site if np.isfinite(per_site[s].get(name, np.nan))]
        weight = sum(w for _, w in pairs)
        summary[name] = sum(v * w for v, w in pairs) / weight if weight else float("nan")
    return summary


def pooled_metrics(ys: Sequence[np.ndarray], ps: Sequence[np.ndarray]) -> dict[str, float]:
    """Metrics on the union of held-out sets (only possible where all predictions are in one place)."""
    return binary_metrics(np.concatenate(list(ys)), np.concatenate(list(ps)))
