"""Federated survival models at 4 and 20 sites: rounds per second, wall time and bytes on the wire.

* ``cox-ph`` (site-stratified Cox, Newton-Raphson over per-site Efron sums, ``federated/survival/cox.py``): each
  Newton round a site sends its log-likelihood, gradient and Hessian (1 + p + p*p float64) and receives the
  coefficients (p float64); bytes are those payloads (what the sums are; framing not counted).
* ``xgboost-aft`` (histogram XGBoost ``survival:aft`` through XGBoost's federated communicator,
  ``federated/survival/boosted.py``): the sites' quantile sketches (p x 256 float64 + p int64 each) agree the bin
  edges, then the trees are grown over the allreduce; its bytes are *measured* by a byte-counting TCP relay in
  front of XGBoost's federated server (``bench_allreduce.CountingRelay``; gRPC/HTTP2 framing counted).
* the ``survival:cox`` gap: the same sites trained with XGBoost's ``survival:cox`` under the communicator vs a
  pooled ``xgboost.train`` on the same discretised matrix -- the reason fedomop refuses ``xgboost-cox``.

The sites are synthetic feature matrices (non-IID: covariate location and censoring differ by site; 10% of
values missing for XGBoost, complete cases for Cox), the same for both models, so the figures are the models'
cost, not the ETL's. Every site is a thread of this process, as ``fedomop train`` runs them.

Usage: .venv/bin/python benchmarks/bench_survival.py [--sites 4 20] [--rows 400] [--features 8] [--trees 60]
       [--write-docs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time

import numpy as np
from _common import REPO, append_docs, load_average, machine
from bench_allreduce import CountingRelay

sys.path.insert(0, str(REPO))

from fedomop.federated.models import xgb_common, xgb_histogram  # noqa: E402
from fedomop.federated.survival import boosted, cox, metrics  # noqa: E402


def synthetic_site(seed: int, rows: int, features: int) -> boosted.Part:
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=0.1 * (seed % 7), size=(rows, features))
    log_t = 5.0 + 0.6 * X[:, 0] - 0.4 * X[:, 1] ** 2 + 0.3 * X[:, 2] * X[:, 3] + 0.4 * rng.normal(size=rows)
    censor = rng.exponential(scale=np.exp(5.5 - 0.05 * (seed % 5)), size=rows)
    return boosted.Part(X, np.minimum(np.exp(log_t), censor).round() + 1.0, np.exp(log_t) <= censor)


def with_missing(part: boosted.Part, seed: int) -> boosted.Part:
    X = part.X.copy()
    X[np.random.default_rng(seed + 1000).random(X.shape) < 0.1] = np.nan
    return boosted.Part(X, part.time, part.event)


def bench_cox(parts: list[boosted.Part]) -> dict[str, float]:
    p = parts[0].X.shape[1]
    calls = []

    def summed(beta: np.ndarray) -> cox.SiteSums:
        calls.append(1)  # one exchange: coefficients to every site, every site's sums back
        return cox.add_sums([cox.efron_sums(s.X, s.time, s.event, beta) for s in parts])

    started = time.perf_counter()
    fit = cox.fit_stratified(summed, p)
    seconds = time.perf_counter() - started
    assert fit.converged
    exchanges = len(calls)
    up = exchanges * len(parts) * (1 + p + p * p) * 8
    down = exchanges * len(parts) * p * 8
    return {"rounds": exchanges, "seconds": seconds, "rounds_per_s": exchanges / seconds, "bytes": up + down}


def federated_booster(parts: list[boosted.Part], edges: list[np.ndarray], trees: int, objective: dict) -> tuple:
    """Train under the communicator through a counting relay; returns (booster bytes, seconds, bytes)."""
    from xgboost.federated import run_federated_server

    port = xgb_histogram.free_port()
    run_federated_server(len(parts), port, blocking=False, timeout=600)
    relay = CountingRelay(port).start()
    xgb = xgb_common.xgboost()
    models: dict[int, bytes] = {}

    def site(rank: int) -> None:
        part = parts[rank]
        with xgb.collective.CommunicatorContext(
            dmlc_communicator="federated",
            federated_server_address=f"127.0.0.1:{relay.port}",
            federated_world_size=len(parts),
            federated_rank=rank,
        ):
            matrix = objective["matrix"](xgb_common.discretise(part.X, edges), part.time, part.event)
            booster = xgb.train(objective["params"], matrix, num_boost_round=trees)
            models[rank] = xgb_common.booster_bytes(booster)

    started = time.perf_counter()
    threads = [threading.Thread(target=site, args=(r,)) for r in range(len(parts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    relay.close()
    assert len(set(models.values())) == 1, "sites ended with different models"
    return models[0], seconds, sum(link.up + link.down for link in relay.links)


def cox_matrix(X: np.ndarray, time_: np.ndarray, event: np.ndarray) -> object:
    """XGBoost's Cox label: the time, negative when censored."""
    return xgb_common.xgboost().DMatrix(X, label=np.where(event, time_, -time_), missing=np.nan)


AFT = {"params": boosted.params(), "matrix": boosted.dmatrix}
XGB_COX = {
    "params": xgb_common.params({"objective": "survival:cox", "eval_metric": "cox-nloglik"}),
    "matrix": cox_matrix,
}


def bench_aft(parts: list[boosted.Part], trees: int, small_cell: int) -> dict[str, float]:
    started = time.perf_counter()
    edges = boosted.agreed_edges(parts, small_cell)
    sketch_bytes = len(parts) * parts[0].X.shape[1] * (xgb_histogram.SKETCH_LEVELS * 8 + 8)
    _, train_seconds, wire = federated_booster(parts, edges, trees, AFT)
    seconds = time.perf_counter() - started
    return {
        "rounds": trees,
        "seconds": seconds,
        "rounds_per_s": trees / train_seconds,
        "bytes": wire + sketch_bytes,
        "sketch_bytes": sketch_bytes,
    }


def cox_gap(parts: list[boosted.Part], held_out: boosted.Part, trees: int, small_cell: int) -> dict[str, float]:
    """XGBoost survival:cox federated (each site's own risk sets) vs pooled (all sites' risk sets), same edges."""
    xgb = xgb_common.xgboost()
    edges = boosted.agreed_edges(parts, small_cell)
    federated_raw, _, _ = federated_booster(parts, edges, trees, XGB_COX)
    pooled_matrix = cox_matrix(
        xgb_common.discretise(np.vstack([p.X for p in parts]), edges),
        np.concatenate([p.time for p in parts]),
        np.concatenate([p.event for p in parts]),
    )
    pooled = xgb.train(XGB_COX["params"], pooled_matrix, num_boost_round=trees)
    unseen = xgb.DMatrix(xgb_common.discretise(held_out.X, edges), missing=np.nan)
    federated_margin = xgb_common.load_booster(federated_raw).predict(unseen, output_margin=True)
    pooled_margin = pooled.predict(unseen, output_margin=True)
    return {
        "max_abs_log_hazard_diff": float(np.max(np.abs(federated_margin - pooled_margin))),
        "c_federated": metrics.harrell_c(held_out.time, held_out.event, federated_margin),
        "c_pooled": metrics.harrell_c(held_out.time, held_out.event, pooled_margin),
    }


def markdown(results: list[dict], gap: dict, args: argparse.Namespace, command: str, loads: tuple) -> str:
    lines = [
        f"## Federated survival models at {' and '.join(str(r['sites']) for r in results)} sites "
        f"({dt.date.today().isoformat()})",
        "",
        f"Machine: {machine()}. 1-min load average before/after: {loads[0]:.1f} / {loads[1]:.1f} (shared VM).",
        "",
        f"Synthetic sites, {args.rows} persons each (70% would be training in a study; here all), "
        f"{args.features} features, non-IID; every site a thread of one process. cox-ph: complete cases, "
        "an exchange = coefficients down, the Efron sums up (one per Newton step and step halving; payload bytes only; "
        "the sites' sums are computed one after another here, in parallel in a deployment). xgboost-aft: "
        f"{args.trees} trees of depth {xgb_common.DEFAULT_PARAMS['max_depth']}, 10% missing values, bytes = "
        "sketches + the allreduce measured on the wire (TCP payload through a counting relay).",
        "",
        "| model | sites | rounds | wall time | rounds/s | bytes, all sites, both directions |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for model in ("cox-ph", "xgboost-aft"):
            m = r[model]
            unit = "exchanges" if model == "cox-ph" else "trees"
            lines.append(
                f"| {model} | {r['sites']} | {m['rounds']} {unit} | {m['seconds']:.2f} s | {m['rounds_per_s']:.1f} | "
                f"{m['bytes']:,.0f} B |"
            )
    lines += [
        "",
        f"XGBoost `survival:cox` through the communicator ({results[0]['sites']} sites, same edges) vs pooled "
        f"`xgboost.train`: max |log-hazard difference| on 1,000 unseen persons {gap['max_abs_log_hazard_diff']:.3f}; "
        f"Harrell's C {gap['c_federated']:.4f} federated vs {gap['c_pooled']:.4f} pooled. The federated model uses "
        "each site's own risk sets (a site-stratified boosted Cox), which no pooled training reproduces: fedomop "
        "refuses `xgboost-cox` and offers `xgboost-aft` (equal to pooled) and `cox-ph` (exact).",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, nargs="*", default=[4, 20])
    parser.add_argument("--rows", type=int, default=400, help="persons per site")
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--trees", type=int, default=60)
    parser.add_argument("--small-cell", type=int, default=10)
    parser.add_argument("--write-docs", action="store_true", help="append the result to docs/benchmarks.md")
    args = parser.parse_args()
    xgb_histogram.require_federated_xgboost()
    load_before = load_average()
    # every cox-ph run before any XGBoost one: XGBoost's federated servers keep running in this process after
    # their training (non-blocking, until their timeout) and would slow the Cox timings
    results = [
        {"sites": n, "cox-ph": bench_cox([synthetic_site(s, args.rows, args.features) for s in range(n)])}
        for n in args.sites
    ]
    for result in results:
        n = int(result["sites"])
        gappy = [with_missing(synthetic_site(s, args.rows, args.features), s) for s in range(n)]
        result["xgboost-aft"] = bench_aft(gappy, args.trees, args.small_cell)
    first = args.sites[0]
    gap = cox_gap(
        [synthetic_site(s, args.rows, args.features) for s in range(first)],
        synthetic_site(999, 1000, args.features),
        args.trees,
        args.small_cell,
    )
    print(json.dumps({"results": results, "xgboost_cox_gap": gap}, indent=1))
    command = ".venv/bin/python benchmarks/bench_survival.py " + " ".join(sys.argv[1:])
    section = markdown(results, gap, args, command.strip(), (load_before, load_average()))
    print(section)
    if args.write_docs:
        append_docs(section)


if __name__ == "__main__":
    main()
