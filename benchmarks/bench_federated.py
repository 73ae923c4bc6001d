"""Federated training on the four harmonized sample sites: rounds, time and bytes per round, AUROC.

For every mode (histogram XGBoost, bagging, cyclic, MLP with FedAvg and FedProx) the
bone-metastasis study runs in Flower's simulation engine; we record the Flower rounds,
training time per round, bytes over the Flower wire per training round (hub -> sites
and back, measured by fedomop.federated.transport.CountingGrid), and held-out AUROC of the
federated model vs pooled training vs each site alone. Histogram XGBoost's gradient
histograms travel through XGBoost's own federated allreduce, outside Flower; their
bytes are measured on the wire by ``bench_allreduce.py``.

Usage: .venv/bin/python benchmarks/bench_federated.py [--sites out/site_a.duckdb ...] [--write-docs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, append_docs, load_average, machine

sys.path.insert(0, str(REPO))

from fedomop.federated.report import markdown_table  # noqa: E402
from fedomop.federated.runner import simulate  # noqa: E402
from fedomop.federated.study import STUDIES_DIR  # noqa: E402

MODES = [
    ("xgboost-hist", {"model": "xgboost-hist"}),
    ("xgboost-bagging", {"model": "xgboost-bagging"}),
    ("xgboost-cyclic", {"model": "xgboost-cyclic"}),
    ("mlp/fedavg", {"model": "mlp", "strategy": "fedavg"}),
    ("mlp/fedprox", {"model": "mlp", "strategy": "fedprox"}),
]


def harmonized_sample_sites(folder: Path) -> list[Path]:
    from fedomop.harmonize.run import run_mapping

    paths = []
    for site in ("site_a", "site_b", "site_c", "site_d"):
        path = folder / f"{site}.duckdb"
        run_mapping(REPO / "mappings" / f"{site}.yaml", REPO / "sample_data" / site, str(path))
        paths.append(path)
    return paths


def training_traffic(result: dict) -> tuple[int, int]:
    """Bytes of the training phase (every phase except setup, site-alone training and final evaluation)."""
    skip = {"setup", "site-alone training", "final evaluation"}
    sent = sum(v for k, v in result["traffic"]["sent"].items() if k not in skip)
    received = sum(v for k, v in result["traffic"]["received"].items() if k not in skip)
    return sent, received


def run_mode(label: str, options: dict, sites: list[Path], out: Path) -> dict:
    started = time.perf_counter()
    result = simulate(STUDIES_DIR / "bone_metastasis.yaml", sites, out=out / label.replace("/", "-"), **options)
    row = result_row(label, options, result, time.perf_counter() - started)
    print(json.dumps({k: v for k, v in row.items() if k != "result"}, default=str), flush=True)
    return row


def result_row(label: str, options: dict, result: dict, wall: float) -> dict:
    """One benchmark row from a run's result.json (simulation or deployment; pooled_summary must be there)."""
    sent, received = training_traffic(result)
    rounds = result["flower_rounds"]
    locals_ = [s["auroc"] for s in result["local_summary"].values()]
    row = {
        "mode": label,
        "flower_rounds": rounds,
        "boosting_rounds_or_rounds": result["settings"]["rounds"],
        "train_s": result["train_seconds"],
        "s_per_round": result["train_seconds"] / rounds,
        "bytes_per_round": (sent + received) / rounds,
        "sent": sent,
        "received": received,
        "auroc_federated": result["federated_summary"]["auroc"],
        "auroc_pooled": result["pooled_summary"]["auroc"],
        "auroc_local_best": max(locals_),
        "auroc_local_mean": sum(locals_) / len(locals_),
        "wall_s": wall,
        "result": result,
    }
    return row


def markdown(rows: list[dict], command: str, load_before: float, load_after: float) -> str:
    lines = [
        f"## Federated training on the sample sites ({dt.date.today().isoformat()})",
        "",
        f"Machine: {machine()}. 1-min load average before/after: {load_before:.1f} / {load_after:.1f} "
        "(the VM is shared; times include Flower's simulation engine with one Ray actor per site).",
        "",
        "Bone-metastasis study (`federated/studies/bone_metastasis.yaml`) on the four harmonized sample sites; "
        "AUROC is the held-out (30%) AUROC weighted by held-out size; 'site alone' is each site's own model "
        "evaluated on every site's held-out set. Bytes are everything on the Flower wire during training "
        "(model parameters, sketches, moments and per-round metrics, both directions, all sites).",
        "",
        "| mode | Flower rounds | model rounds | train s | s / round | bytes / round | AUROC federated | AUROC pooled "
        "| AUROC best site alone | AUROC mean site alone |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['flower_rounds']} | {r['boosting_rounds_or_rounds']} | {r['train_s']:.1f} | "
            f"{r['s_per_round']:.2f} | {r['bytes_per_round']:,.0f} | {r['auroc_federated']:.3f} | "
            f"{r['auroc_pooled']:.3f} | {r['auroc_local_best']:.3f} | {r['auroc_local_mean']:.3f} |"
        )
    hist = next((r for r in rows if r["mode"] == "xgboost-hist"), None)
    if hist:
        lines += [
            "",
            f"Histogram XGBoost: its {hist['flower_rounds']} Flower rounds are the quantile-sketch exchange and the "
            "training call; the gradient histograms go through XGBoost's federated allreduce, outside Flower "
            "(measured on the wire by `bench_allreduce.py`). Its comparison table:",
            "",
            markdown_table(hist["result"]),
        ]
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", nargs="*", type=Path, help="harmonized site databases (default: map the samples)")
    parser.add_argument("--modes", nargs="*", default=[m for m, _ in MODES])
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sites = args.sites or harmonized_sample_sites(Path(tmp) / "sites")
        load_before = load_average()
        rows = [run_mode(label, options, sites, Path(tmp)) for label, options in MODES if label in args.modes]
        load_after = load_average()
    command = "  ".join([".venv/bin/python benchmarks/bench_federated.py", *sys.argv[1:]])
    section = markdown(rows, command.replace("  ", " "), load_before, load_after)
    print(section)
    if args.write_docs:
        append_docs(section)


if __name__ == "__main__":
    main()
