"""A time-to-event study end to end: pre-flight, federated stratified Cox, each site alone, pooled, metrics, KM.

What leaves a site: the feasibility report (withheld counts), per Newton step the Efron sums of its stratum
(log-likelihood, gradient, Hessian: p + p^2 + 1 numbers, no rows), its held-out metrics, and its Kaplan-Meier
interval counts with small cells merged or withheld. Each site keeps its own baseline hazard (the model is
stratified by site, as the clarification of the issue asks), so survival probabilities are predicted at the site.

The pooled reference fits the same site-stratified model on the rows of every site together; because the
stratified partial likelihood is a sum over sites, it equals the federated fit up to floating-point order (the
tests check it against lifelines on the NCCTG lung trial). Cox uses complete cases: a row with any missing covariate is
left out of fitting and evaluation at every site (the count is reported).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedomop.federated.errors import StudyError
from fedomop.federated.feasibility import SiteFeasibility, require_feasible, site_feasibility
from fedomop.federated.features import SiteData, build_features
from fedomop.federated.governance.suppression import suppress_counts
from fedomop.federated.study import StudySpec
from fedomop.federated.survival import boosted, cox, km, metrics
from fedomop.harmonize.ground.smallcell import is_small

KM_INTERVAL_DAYS = 30.0
COX_PH = "cox-ph"
AFT_ROUNDS = 60
SURVIVAL_MODELS = (COX_PH, boosted.AFT, boosted.COX)
MODEL_LABELS = {
    COX_PH: "cox-ph (site-stratified, Efron ties)",
    boosted.AFT: "xgboost-aft (histogram, survival:aft, normal, scale 1, agreed bin edges)",
    boosted.COX: "xgboost-cox (histogram, survival:cox stratified by site, Breslow ties, agreed bin edges)",
}


@dataclass
class Rows:
    """One site's complete-case rows for fitting or evaluation."""

    X: np.ndarray
    time: np.ndarray
    event: np.ndarray
    left_out: int

    @classmethod
    def of(cls, data: SiteData, *, complete_cases: bool = True) -> Rows:
        """``complete_cases``: leave out rows with a missing covariate (Cox); XGBoost keeps them (missing stays
        missing: its trees learn a default direction for it)."""
        assert data.time is not None  # only time-to-event studies come here
        complete = ~np.isnan(data.X).any(axis=1) if complete_cases else np.ones(data.n, dtype=bool)
        return cls(data.X[complete], data.time[complete], data.y[complete] == 1, int((~complete).sum()))


@dataclass
class SurvivalResult:
    """Coefficients and metrics per model (federated, each site alone, pooled), per site and weighted."""

    study: str
    feature_names: list[str]
    horizons: list[float]
    coefficients: dict[str, list[float]]
    metrics: dict[str, dict[str, dict[str, float]]]  # model -> site (or "weighted") -> metric
    sites: dict[str, dict[str, Any]]
    km_curve: list[tuple[float, float, int, int]] = field(default_factory=list)
    rounds: int = 0
    model: str = "cox-ph (site-stratified, Efron ties)"
    booster: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "model": self.model,
            "feature_names": self.feature_names,
            "horizons_days": self.horizons,
            "coefficients": self.coefficients,
            "metrics": self.metrics,
            "sites": self.sites,
            "kaplan_meier": [{"day": d, "survival": s, "at_risk": r, "events": e} for d, s, r, e in self.km_curve],
            "rounds": self.rounds,
        }


def _fit(parts: list[Rows], p: int) -> cox.CoxFit:
    if not any(part.event.any() for part in parts):
        raise StudyError("no outcome event among the training rows", where="cox-ph", fix="check the study outcome")
    return cox.fit_stratified(lambda beta: cox.add_sums([cox.efron_sums(r.X, r.time, r.event, beta) for r in parts]), p)


def _evaluate(beta: np.ndarray, train: Rows, test: Rows, horizons: list[float]) -> dict[str, float]:
    """Held-out metrics at one site with the site's own Breslow baseline (its stratum)."""
    times, hazard = cox.breslow_baseline(train.X, train.time, train.event, beta)
    risk = np.exp(test.X @ beta)
    survival = {h: cox.survival_at(times, hazard, risk, h) for h in horizons}
    values = metrics.survival_metrics(test.time, test.event, test.X @ beta, survival)
    return {**values, "n_test": float(len(test.time))}


def _weighted(per_site: dict[str, dict[str, float]]) -> dict[str, float]:
    """Metrics averaged over sites weighted by held-out rows (NaN where a site has no comparable pairs is skipped)."""
    keys = [k for k in next(iter(per_site.values())) if k != "n_test"]
    out = {}
    for key in keys:
        pairs = [(v[key], v["n_test"]) for v in per_site.values() if np.isfinite(v[key])]
        weight = sum(n for _, n in pairs)
        out[key] = sum(value * n for value, n in pairs) / weight if weight else float("nan")
    return out


def _database_name(db: str) -> str:
    """A site without cdm_source: its file name, or the database name of a URL (not the URL's last path piece)."""
    if "://" not in db:
        return Path(db).stem
    import sqlalchemy as sa

    return sa.engine.make_url(db).database or db


def site_names(databases: list[str]) -> dict[str, str]:
    """Name -> database: each site's ``cdm_source_abbreviation`` (its identity), else the file name.

    Two databases of the same site would count its patients twice; they are refused.
    """
    from fedomop.harmonize.ground.db import connect

    named: dict[str, str] = {}
    for db in databases:
        database = connect(db, read_only=True)
        try:
            name = None
            if database.has_table("cdm_source"):
                found = database.query("SELECT cdm_source_abbreviation FROM cdm_source")
                name = str(found.item()) if found.height == 1 and found.item() else None
        finally:
            database.dispose()
        name = name or _database_name(db)
        if name in named:
            raise StudyError(
                f"two databases are the same site {name!r}: {named[name]} and {db}",
                where="--sites",
                fix="give each site once (a site's identity is its cdm_source_abbreviation)",
            )
        named[name] = db
    return named


def run_survival(
    study: StudySpec, sites: dict[str, str], *, threshold: int | None = None, model: str = COX_PH, rounds: int = 0
) -> SurvivalResult:
    """Pre-flight every site, then fit and compare. ``sites``: name -> database path or URL.

    ``model``: ``cox-ph`` (federated site-stratified Cox), ``xgboost-aft`` (histogram XGBoost ``survival:aft``
    through XGBoost's federated communicator) or ``xgboost-cox`` (the same, ``survival:cox`` stratified by site).
    """
    if not study.outcome.time_to_event:
        raise StudyError(
            f"{model} needs a time-to-event study", where=study.name, fix="set `outcome.type: time_to_event`"
        )
    if model not in SURVIVAL_MODELS:
        raise StudyError(
            f"unknown survival model {model!r}", where="--model", fix=f"use one of: {', '.join(SURVIVAL_MODELS)}"
        )
    small = threshold or study.small_cell
    feasibility: list[SiteFeasibility] = [site_feasibility(db, study, name, small) for name, db in sites.items()]
    require_feasible(feasibility, study)
    horizons = [float(h) for h in study.outcome.horizons] or [365.0]
    train: dict[str, Rows] = {}
    test: dict[str, Rows] = {}
    raw_train: dict[str, np.ndarray] = {}
    versions = {}
    for name, db in sites.items():
        data = build_features(db, study)
        versions[name] = data.digest()
        site_train, site_test = data.train_test(study)
        cases = model == COX_PH
        train[name] = Rows.of(site_train, complete_cases=cases)
        test[name] = Rows.of(site_test, complete_cases=cases)
        raw_train[name] = site_train.X
    require_complete_cases(study, raw_train, train, model)
    fitted = (
        _fit_cox(study, train, test, horizons)
        if model == COX_PH
        else _fit_boosted(model, train, test, horizons, small, rounds)
    )
    results = {label: _released(per_site, test, horizons, small) for label, per_site in fitted.metrics.items()}
    followed = [
        (np.concatenate([train[n].time, test[n].time]), np.concatenate([train[n].event, test[n].event])) for n in sites
    ]
    grid = km.agreed_boundaries(followed, KM_INTERVAL_DAYS, max(horizons), small)
    intervals = [km.counts_on(t, e, grid) for t, e in followed]
    return SurvivalResult(
        study=study.name,
        feature_names=study.feature_names,
        horizons=horizons,
        coefficients=fitted.coefficients,
        metrics=results,
        sites={n: {**_released_sizes(train[n], test[n], small, n), "data_version": versions[n]} for n in sites},
        km_curve=km.pooled_curve(intervals),
        rounds=fitted.rounds,
        model=MODEL_LABELS[model],
        booster=fitted.booster,
    )


def _released_sizes(train: Rows, test: Rows, threshold: int, site: str) -> dict[str, int | None]:
    """A site's training, held-out and left-out row counts through the small-cell rule.

    The three add up to the site's cohort, which the feasibility step releases, so they are one group: when one
    is a small cell all three are withheld (``None``), or the small one could be recovered by subtraction.
    """
    sizes = {
        "n_train": len(train.time),
        "n_test": len(test.time),
        "left_out_incomplete": train.left_out + test.left_out,
    }
    return suppress_counts(sizes, threshold, group=f"{site}.cohort")


def require_complete_cases(study: StudySpec, raw: dict[str, np.ndarray], train: dict[str, Rows], model: str) -> None:
    """Stop, naming the site and covariate, where complete cases (Cox) leave a model nothing to fit.

    A covariate allowed absent at a site (``allow_absent_covariates``) is missing for everyone there, so under
    complete cases that site has no row at all; and a covariate that never varies within any site among the
    complete rows has no site-stratified Cox coefficient (its column is absorbed by the strata).
    """
    if model != COX_PH:
        return
    names = study.feature_names
    empty = {
        site: [names[j] for j in range(len(names)) if np.isnan(raw[site][:, j]).all()]
        for site, rows in train.items()
        if len(rows.time) == 0
    }
    if empty:
        detail = "; ".join(
            f"{site} (all missing: {', '.join(cols) or 'different covariates per row'})" for site, cols in empty.items()
        )
        raise StudyError(
            f"{model} fits complete cases, and no training row is complete at {detail}",
            where=study.name,
            fix="drop the covariate from the study, leave that site out (--sites), or use --model xgboost-aft or "
            "xgboost-cox (they keep rows with missing values)",
        )
    flat = [
        names[j]
        for j in range(len(names))
        if all(len(rows.time) < 2 or np.ptp(rows.X[:, j]) == 0 for rows in train.values())
    ]
    if flat:
        raise StudyError(
            f"cox-ph: covariate(s) {', '.join(flat)} do not vary within any site among the complete training rows, "
            "so a site-stratified Cox model has no coefficient for them",
            where=study.name,
            fix="drop the covariate(s) from the study",
        )


@dataclass
class Fitted:
    """What a survival model's fits give the comparison: per-site held-out metrics by model label."""

    metrics: dict[str, dict[str, dict[str, float]]]  # "federated" | "pooled" | "site alone" -> site -> metric
    rounds: int
    coefficients: dict[str, list[float]] = field(default_factory=dict)
    booster: bytes = b""


def _fit_cox(study: StudySpec, train: dict[str, Rows], test: dict[str, Rows], horizons: list[float]) -> Fitted:
    p = len(study.feature_names)
    federated = _fit(list(train.values()), p)
    pooled = _fit([Rows(r.X.copy(), r.time.copy(), r.event.copy(), 0) for r in train.values()], p)
    alone = {name: _fit([rows], p).beta for name, rows in train.items()}
    per_model = {"federated": federated.beta, "pooled": pooled.beta}
    results = {
        label: {name: _evaluate(beta, train[name], test[name], horizons) for name in train}
        for label, beta in per_model.items()
    }
    results["site alone"] = {name: _evaluate(alone[name], train[name], test[name], horizons) for name in train}
    return Fitted(
        results,
        federated.iterations,
        {
            "federated": federated.beta.tolist(),
            "pooled": pooled.beta.tolist(),
            **{f"{n} alone": b.tolist() for n, b in alone.items()},
        },
    )


def _fit_boosted(
    model: str, train: dict[str, Rows], test: dict[str, Rows], horizons: list[float], small: int, rounds: int
) -> Fitted:
    """Histogram XGBoost survival:aft or site-stratified survival:cox: federated (agreed edges, communicator), pooled
    on the same discretised matrix (for xgboost-cox: the pooled site-stratified fit), and each site alone on its
    own raw values."""
    if not any(rows.event.any() for rows in train.values()):
        raise StudyError("no outcome event among the training rows", where=model, fix="check the study outcome")
    rounds = rounds or AFT_ROUNDS
    parts = {name: boosted.Part(r.X, r.time, r.event) for name, r in train.items()}
    edges = boosted.agreed_edges(list(parts.values()), small)
    federated = boosted.train_federated(list(parts.values()), edges, rounds, model)
    pooled = boosted.train_plain(list(parts.values()), rounds, edges, model)

    def scored(raw: bytes, name: str, cuts: list[np.ndarray] | None) -> dict[str, float]:
        risk, survival = _boosted_predictions(model, raw, train[name], test[name], cuts, horizons)
        values = metrics.survival_metrics(test[name].time, test[name].event, risk, survival)
        return {**values, "n_test": float(len(test[name].time))}

    results = {
        "federated": {name: scored(federated, name, edges) for name in train},
        "pooled": {name: scored(pooled, name, edges) for name in train},
        "site alone": {
            name: scored(boosted.train_plain([parts[name]], rounds, model=model), name, None) for name in train
        },
    }
    return Fitted(results, rounds, booster=federated)


def _boosted_predictions(
    model: str, raw: bytes, train: Rows, test: Rows, cuts: list[np.ndarray] | None, horizons: list[float]
) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Risk (higher = earlier event) and S(h|x) at each horizon for one site's held-out rows.

    aft: risk -f(x), S from the normal AFT. cox: risk f(x) (log relative hazard), S(h|x) = exp(-H0(h) e^f(x)) with
    the site's own Breslow baseline H0 from its training rows (its stratum), as ``cox-ph`` predicts."""
    location = boosted.margin(raw, test.X, cuts)
    if model == boosted.AFT:
        return -location, {h: boosted.survival_at(location, h) for h in horizons}
    fitted = boosted.margin(raw, train.X, cuts)
    return location, {h: boosted.cox_survival_at(fitted, train.time, train.event, location, h) for h in horizons}


def _released(
    per_site: dict[str, dict[str, float]], test: dict[str, Rows], horizons: list[float], small: int
) -> dict[str, dict[str, float]]:
    """Per-site metrics with small cells withheld (NaN), and their held-out-row-weighted mean over the sites whose
    value is released.

    A site's C-index is withheld when its held-out rows or events are 1..small-1; a horizon's AUROC, Brier and
    calibration when the events by that horizon or the rows still followed after it are 1..small-1
    (:func:`fedomop.harmonize.ground.smallcell.is_small`). A withheld value is also left out of the weighted mean.
    """
    released: dict[str, dict[str, float]] = {}
    for name, values in per_site.items():
        rows = test[name]
        counts = {"c_index": (len(rows.time), int(rows.event.sum()))}
        for h in horizons:
            by_h = (int((rows.event & (rows.time <= h)).sum()), int((rows.time > h).sum()))
            counts.update({f"{kind}_{h:g}d": by_h for kind in ("auroc", "brier", "calibration")})
        released[name] = {
            key: (float("nan") if any(is_small(c, small) for c in counts.get(key, ())) else value)
            for key, value in values.items()
        }
    return {**released, "weighted": _weighted(released)}


def write_result(result: SurvivalResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "survival_result.json"
    if result.booster:  # the federated booster (its bin edges are re-agreed by the sites, never stored with rows)
        (out / "model.json").write_bytes(result.booster)
    path.write_text(json.dumps(result.to_json(), indent=2, allow_nan=True), encoding="utf-8")
    return path


def comparison_rows(result: SurvivalResult) -> list[tuple[str, dict[str, float]]]:
    """(label, weighted metrics) rows: federated, each site alone, pooled -- as the classifier table prints them."""
    rows = [("federated", result.metrics["federated"]["weighted"])]
    rows += [(f"{site} alone", values) for site, values in result.metrics["site alone"].items() if site != "weighted"]
    pooled = "pooled site-stratified (reference)" if result.model == MODEL_LABELS[boosted.COX] else "pooled (reference)"
    rows.append((pooled, result.metrics["pooled"]["weighted"]))
    return rows
