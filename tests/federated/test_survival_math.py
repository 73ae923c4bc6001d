"""The survival building blocks against hand computations and against lifelines on a real trial (NCCTG lung)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedomop.federated.survival import cox, km, metrics


def test_efron_sums_by_hand() -> None:
    """Two tied events at t=1 (x=0, x=1) and one censoring at t=2 (x=0), beta=0.

    Risk set at t=1: all three (S0=3, S1=1); tied set D0=2, D1=1, d=2. Efron:
    loglik = x_D.beta - log(3) - log(3 - 1/2*2) = -log 3 - log 2;
    gradient = 1 - 1/3 - (1 - 1/2)/(3 - 1) = 5/12; hessian = -[(1/3 - 1/9) + (0.5/2 - 0.0625)] = -(2/9 + 3/16).
    """
    sums = cox.efron_sums(np.array([[0.0], [1.0], [0.0]]), np.array([1.0, 1.0, 2.0]), np.array([1, 1, 0]), np.zeros(1))
    assert sums.loglik == pytest.approx(-math.log(3) - math.log(2), abs=1e-12)
    assert sums.gradient[0] == pytest.approx(5 / 12, abs=1e-12)
    assert sums.hessian[0, 0] == pytest.approx(-(2 / 9 + 3 / 16), abs=1e-12)
    assert (sums.events, sums.rows) == (2, 3)


@pytest.fixture(scope="module")
def lung() -> object:
    from lifelines.datasets import load_lung

    frame = load_lung().dropna(subset=["inst", "age", "sex", "ph.ecog", "ph.karno", "wt.loss"])  # status 1 = death
    frame["site"] = (frame["inst"] % 3).astype(int)  # three hospitals by institution code: non-IID
    return frame


COLUMNS = ["age", "sex", "ph.ecog", "ph.karno", "wt.loss"]


def test_federated_stratified_cox_equals_pooled_lifelines_fit(lung: object) -> None:
    """Sites send only (loglik, gradient, Hessian) per Newton step; the fit equals lifelines' pooled fit
    stratified by site (Efron ties) to 1e-6."""
    from lifelines import CoxPHFitter

    frame = lung  # type: ignore[assignment]
    pooled = CoxPHFitter().fit(
        frame[[*COLUMNS, "time", "status", "site"]], "time", "status", strata=["site"], fit_options={"precision": 1e-12}
    )
    sites = [group for _, group in frame.groupby("site")]

    def summed(beta: np.ndarray) -> cox.SiteSums:
        return cox.add_sums(
            [
                cox.efron_sums(g[COLUMNS].to_numpy(float), g["time"].to_numpy(float), g["status"].to_numpy() == 1, beta)
                for g in sites
            ]
        )

    fit = cox.fit_stratified(summed, len(COLUMNS))
    assert fit.converged and len(sites) == 3
    np.testing.assert_allclose(fit.beta, pooled.params_.to_numpy(), atol=1e-6)
    np.testing.assert_allclose(fit.standard_errors, pooled.standard_errors_.to_numpy(), atol=1e-6)
    assert fit.loglik == pytest.approx(pooled.log_likelihood_, abs=1e-6)


def test_harrell_c_by_hand_and_against_lifelines() -> None:
    """times 1,2,3,4 events 1,0,1,1, risks 4,3,1,2. Comparable pairs (shorter time is an event):
    (1,2) (1,3) (1,4) (3,4): concordant when the shorter has the higher risk: 1>3,1>1?,...
    risk: r1=4 > r2=3, r1 > r3=1, r1 > r4=2: 3 concordant; (3,4): r3=1 < r4=2: discordant. C = 3/4."""
    from lifelines.utils import concordance_index

    time, event, risk = np.array([1.0, 2, 3, 4]), np.array([1, 0, 1, 1]), np.array([4.0, 3, 1, 2])
    assert metrics.harrell_c(time, event, risk) == pytest.approx(0.75)
    rng = np.random.default_rng(3)
    t = rng.integers(1, 50, 300).astype(float)
    e = rng.random(300) < 0.6
    r = rng.normal(size=300)
    assert metrics.harrell_c(t, e, r) == pytest.approx(concordance_index(t, -r, e), abs=1e-12)


def test_td_auc_and_brier_without_censoring_are_the_plain_ones() -> None:
    """No censoring: G = 1, so the cumulative/dynamic AUC is the AUROC of (event by t) and Brier the mean square."""
    time = np.array([1.0, 2, 3, 4, 5, 6])
    event = np.ones(6, dtype=bool)
    risk = np.array([6.0, 4, 5, 1, 2, 3])
    # horizon 3: cases rows 1,2,3 (risks 6,4,5); controls 4,5,6 (risks 1,2,3): every case outranks every control
    assert metrics.cumulative_dynamic_auc(time, event, risk, 3.0) == pytest.approx(1.0)
    survival = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    expected = (0.1**2 + 0.2**2 + 0.3**2 + 0.4**2 + 0.3**2 + 0.2**2) / 6
    assert metrics.brier_score(time, event, survival, 3.0) == pytest.approx(expected)


def test_brier_ipcw_by_hand() -> None:
    """Rows (t, event): (1,1) (2,0) (3,1) (5,0); horizon 4. Reverse KM of censoring: G(t)=1 before 2, then
    1 - 1/3 = 2/3 (three at risk at t=2, one censored). Row 1: event by 4, weight 1/G(1-)=1; row 2: censored
    before 4, weight 0; row 3: event, weight 1/G(3-)=3/2; row 4: beyond 4, weight 1/G(4)=3/2."""
    time, event = np.array([1.0, 2, 3, 5]), np.array([1, 0, 1, 0], dtype=bool)
    survival = np.array([0.2, 0.5, 0.4, 0.9])
    expected = (0.2**2 * 1 + 0.4**2 * 1.5 + 0.1**2 * 1.5) / 4
    assert metrics.brier_score(time, event, survival, 4.0) == pytest.approx(expected)


def test_pooled_km_from_unsuppressed_daily_counts_is_the_exact_km() -> None:
    from lifelines import KaplanMeierFitter

    rng = np.random.default_rng(7)
    sites = [(rng.integers(1, 200, n).astype(float), rng.random(n) < 0.7) for n in (120, 80, 150)]
    tables = [km.site_counts(t, e, 1.0, 200.0) for t, e in sites]
    curve = km.pooled_curve([km.releasable(table, 1) for table in tables])
    time = np.concatenate([t for t, _ in sites])
    event = np.concatenate([e for _, e in sites])
    fitted = KaplanMeierFitter().fit(time, event)
    for end, survival, _, _ in curve:
        assert survival == pytest.approx(float(fitted.survival_function_at_times(end - 1e-9).iloc[0]), abs=1e-12)


def test_released_km_counts_have_no_small_cells() -> None:
    rng = np.random.default_rng(11)
    time, event = rng.integers(1, 400, 90).astype(float), rng.random(90) < 0.5
    released = km.releasable(km.site_counts(time, event, 7.0, 400.0), 5)
    assert released
    for interval in released:
        assert interval.at_risk >= 5
        assert interval.events == 0 or interval.events >= 5
        assert interval.censored == 0 or interval.censored >= 5
    ends = [i.end for i in released]
    assert ends == sorted(ends) and released[0].start == 0.0


def test_km_grid_agreed_by_one_bit_per_site_has_no_small_cells(lung: object) -> None:
    """Sites only say yes/no to a proposed interval; the released counts on the agreed grid hold no count in
    1..threshold-1, and the pooled curve is the grouped product-limit estimate of the pooled rows on that grid."""
    frame = lung  # type: ignore[assignment]
    threshold = 10
    sites = [(g["time"].to_numpy(float), g["status"].to_numpy() == 1) for _, g in frame.groupby("site")]
    grid = km.agreed_boundaries(sites, 30.0, 730.0, threshold)
    assert grid and all(b % 30 == 0 for b in grid)
    released = [km.counts_on(t, e, grid) for t, e in sites]
    for intervals in released:
        for i in intervals:
            assert i.at_risk >= threshold
            assert i.events == 0 or i.events >= threshold
            assert i.censored == 0 or i.censored >= threshold
    time = frame["time"].to_numpy(float)
    event = frame["status"].to_numpy() == 1
    expected, start = 1.0, 0.0
    for (end, survival, at_risk, events) in km.pooled_curve(released):
        n = int((time >= start).sum())
        d = int(((time >= start) & (time < end) & event).sum())
        expected *= 1 - d / n
        assert (at_risk, events) == (n, d)
        assert survival == pytest.approx(expected, abs=1e-12)
        start = end
