"""Histogram XGBoost survival:aft through XGBoost's federated communicator, and survival metrics released per site.

Expected values: the pooled model is built here with xgboost.train directly (not with fedomop's helpers) on the
same discretised matrix; metric values are computed by hand in the comments.
"""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from fedomop.federated.errors import StudyError
from fedomop.federated.models import xgb_common
from fedomop.federated.study import parse_study
from fedomop.federated.survival import boosted
from fedomop.federated.survival.runner import Rows, _released, run_survival

TTE_STUDY = """\
name: tiny_tte
cohort: {concepts: [{vocabulary: SNOMED, code: "254637007"}]}
outcome: {type: time_to_event, death: event, window: [0, 1000]}
covariates: [{name: age, kind: age}]
"""


def _site(seed: int, n: int) -> boosted.Part:
    """Non-IID sites: the covariates' location and the censoring rate differ by site; ~10% of values missing."""
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=0.4 * seed, size=(n, 3))
    log_t = 5.0 + 0.8 * X[:, 0] - 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=n)
    censor = rng.exponential(scale=np.exp(5.5 - 0.3 * seed), size=n)
    X[rng.random((n, 3)) < 0.1] = np.nan
    time = np.minimum(np.exp(log_t), censor).round()
    return boosted.Part(X, time, np.exp(log_t) <= censor)


def test_federated_aft_equals_pooled_training_on_the_agreed_edges() -> None:
    parts = [_site(s, 250 + 60 * s) for s in range(3)]
    edges = boosted.agreed_edges(parts, small_cell=5)
    federated = xgb_common.load_booster(boosted.train_federated(parts, edges, rounds=12))

    pooled_X = xgb_common.discretise(np.vstack([p.X for p in parts]), edges)
    time = np.maximum(np.concatenate([p.time for p in parts]), 1.0)
    event = np.concatenate([p.event for p in parts])
    matrix = xgb.DMatrix(pooled_X, missing=np.nan)
    matrix.set_float_info("label_lower_bound", time)
    matrix.set_float_info("label_upper_bound", np.where(event, time, np.inf))
    parameters = {
        **xgb_common.DEFAULT_PARAMS,
        "objective": "survival:aft",
        "eval_metric": "aft-nloglik",
        "aft_loss_distribution": "normal",
        "aft_loss_distribution_scale": 1.0,
    }
    pooled = xgb.train(parameters, matrix, num_boost_round=12)

    unseen = xgb.DMatrix(xgb_common.discretise(_site(7, 400).X, edges), missing=np.nan)
    federated_margin = federated.predict(unseen, output_margin=True)
    pooled_margin = pooled.predict(unseen, output_margin=True)
    assert np.std(pooled_margin) > 0.1  # the trees split: the comparison is not between two constants
    np.testing.assert_allclose(federated_margin, pooled_margin, atol=1e-5)


def test_xgboost_cox_is_refused_naming_the_gap() -> None:
    with pytest.raises(StudyError) as refused:
        run_survival(parse_study(TTE_STUDY), {}, model=boosted.COX)
    assert "own risk sets" in str(refused.value) and "no pooled" in str(refused.value)
    assert "xgboost-aft" in refused.value.fix and "cox-ph" in refused.value.fix


def test_aft_survival_probability_by_hand() -> None:
    """Normal AFT, sigma 1: S(h|x) = 1 - Phi(ln h - f(x)); f(x) = ln 100 gives 0.5 at h = 100 and
    1 - Phi(1) = 0.158655 at h = 100 e."""
    location = np.array([np.log(100.0)])
    assert boosted.survival_at(location, 100.0)[0] == pytest.approx(0.5, abs=1e-12)
    assert boosted.survival_at(location, 100.0 * np.e)[0] == pytest.approx(0.158655, abs=1e-6)


def test_site_metrics_are_released_only_above_the_small_cell_threshold() -> None:
    """Site a: 12 held-out rows, 10 events by day 100 (days 1..10), rows 11 and 12 followed beyond day 100
    (2 rows: a small cell at threshold 3 for the horizon, not for the C-index). Site b: 2 rows (small).

    Harrell's C at site a from risks [12, 11, ..., 1] (earlier time, higher risk): all comparable pairs concordant,
    C = 1. The weighted C is then site a's alone (site b withheld): 1.0."""
    from fedomop.federated.survival import metrics

    time_a = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 150, 200], dtype=float)
    event_a = np.array([True] * 10 + [False, True])
    rows_a = Rows(np.zeros((12, 1)), time_a, event_a, 0)
    rows_b = Rows(np.zeros((2, 1)), np.array([5.0, 6.0]), np.array([True, True]), 0)
    risk_a = -time_a
    survival = {100.0: np.full(12, 0.5)}
    per_site = {
        "a": {**metrics.survival_metrics(time_a, event_a, risk_a, survival), "n_test": 12.0},
        "b": {"c_index": 0.25, "auroc_100d": 0.5, "brier_100d": 0.2, "calibration_100d": 0.1, "n_test": 2.0},
    }
    released = _released(per_site, {"a": rows_a, "b": rows_b}, [100.0], small=3)
    assert released["a"]["c_index"] == 1.0
    assert np.isnan(released["a"]["auroc_100d"])  # 2 rows beyond day 100: withheld at threshold 3
    assert all(np.isnan(v) for k, v in released["b"].items() if k != "n_test")  # 2 rows, 2 events
    assert released["weighted"]["c_index"] == 1.0
    assert np.isnan(released["weighted"]["brier_100d"])
    # at threshold 2 the horizon metrics of site a are released: 10 events by day 100 (weights 1/G = 1, nothing
    # censored before day 100) and 2 rows beyond; AUROC = 1; Brier = (10 * 0.5^2 + 2 * 0.5^2 / G(100)) / 12 with
    # G(100) = 1 (the first censoring is at day 150): 0.25
    opened = _released(per_site, {"a": rows_a, "b": rows_b}, [100.0], small=2)
    assert opened["a"]["auroc_100d"] == 1.0
    assert opened["a"]["brier_100d"] == pytest.approx(0.25)


def test_cli_refuses_xgboost_cox_and_a_deployment_for_time_to_event_studies(tmp_path) -> None:
    """Both refusals come before any site is read: exit 2, the reason and a fix, no traceback."""
    from typer.testing import CliRunner

    from fedomop.cli import app

    study = tmp_path / "tte.yaml"
    study.write_text(TTE_STUDY, encoding="utf-8")
    site = tmp_path / "site.duckdb"
    site.touch()
    boosted_cox = CliRunner().invoke(
        app, ["train", "--study", str(study), "--model", "xgboost-cox", "--sites", str(site)]
    )
    assert isinstance(boosted_cox.exception, StudyError) and "own risk sets" in str(boosted_cox.exception)
    deployed = CliRunner().invoke(app, ["train", "--study", str(study), "--model", "xgboost-aft", "--federation", "x"])
    assert isinstance(deployed.exception, StudyError)
    assert "Flower deployment" in str(deployed.exception) and "--sites" in deployed.exception.fix


def test_complete_cases_that_leave_nothing_to_fit_stop_naming_site_and_covariate() -> None:
    """Cox on complete cases: a covariate allowed absent at a site leaves that site no complete row; a covariate that
    never varies within a site among complete rows has no stratified coefficient. Both stop before fitting (no
    singular matrix); xgboost-aft keeps rows with missing values and is not stopped."""
    from fedomop.federated.survival.runner import require_complete_cases

    study = parse_study(
        TTE_STUDY.replace(
            "[{name: age, kind: age}]",
            "[{name: age, kind: age}, {name: male, kind: sex, concepts: [{vocabulary: Gender, code: M}]}]",
        )
    )
    ages = np.array([[50.0, np.nan], [60.0, np.nan]])
    with pytest.raises(StudyError, match=r"no training row is complete at b \(all missing: male\)"):
        require_complete_cases(
            study,
            {"a": np.array([[50.0, 1.0], [60.0, 0.0]]), "b": ages},
            {
                "a": Rows(np.array([[50.0, 1.0], [60.0, 0.0]]), np.ones(2), np.ones(2, bool), 0),
                "b": Rows(np.zeros((0, 2)), np.zeros(0), np.zeros(0, bool), 2),
            },
            "cox-ph",
        )
    flat = Rows(np.array([[50.0, 1.0], [60.0, 1.0], [70.0, 1.0]]), np.ones(3), np.ones(3, bool), 0)
    with pytest.raises(StudyError, match="male do not vary within any site"):
        require_complete_cases(study, {"a": flat.X}, {"a": flat}, "cox-ph")
    require_complete_cases(
        study, {"a": flat.X}, {"a": flat}, "xgboost-aft"
    )  # keeps incomplete rows, needs no variation
