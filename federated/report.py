"""The comparison table (federated vs each site alone vs pooled) and the model card."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SUMMARY_COLUMNS = (
    ("auroc", "AUROC"),
    ("auprc", "AUPRC"),
    ("brier", "Brier"),
    ("ece", "ECE"),
    ("cal_slope", "cal. slope"),
)


def _fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def comparison_rows(result: dict[str, Any]) -> list[tuple[str, dict[str, dict[str, float]], dict[str, float]]]:
    """(label, per-site metrics, weighted summary) for the federated model, each site alone, and pooled."""
    rows = [(f"federated ({_model_label(result)})", result["federated"], result["federated_summary"])]
    for site, per_site in result.get("local", {}).items():
        rows.append((f"{site} alone", per_site, result["local_summary"][site]))
    if result.get("pooled"):
        rows.append(("pooled (reference)", result["pooled"], result["pooled_summary"]))
    return rows


def _model_label(result: dict[str, Any]) -> str:
    settings = result["settings"]
    return f"mlp/{settings['strategy']}" if settings["model"] == "mlp" else settings["model"]


def comparison_table(result: dict[str, Any]) -> Table:
    sites = list(result["sites"])
    settings = result["settings"]
    table = Table(
        title=f"{settings['study']}: held-out performance ({_model_label(result)}, {settings['rounds']} rounds)",
        caption="AUROC per site on its held-out 30%; summary columns weighted by held-out size",
    )
    table.add_column("model")
    for site in sites:
        table.add_column(f"{site}\nAUROC", justify="right")
    for _, label in SUMMARY_COLUMNS:
        table.add_column(f"weighted\n{label}", justify="right")
    for label, per_site, summary in comparison_rows(result):
        cells = [_fmt(per_site.get(site, {}).get("auroc")) for site in sites]
        table.add_row(label, *cells, *(_fmt(summary.get(key)) for key, _ in SUMMARY_COLUMNS))
    return table


def print_comparison(result: dict[str, Any], console: Console | None = None) -> None:
    """Print the table; when output is not a terminal, wide enough that labels are never cut."""
    console = console or Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 170), file=console.file)
    console.print(comparison_table(result))


def markdown_table(result: dict[str, Any]) -> str:
    sites = list(result["sites"])
    header = ["model", *(f"{s} AUROC" for s in sites), *(f"weighted {label}" for _, label in SUMMARY_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, per_site, summary in comparison_rows(result):
        cells = [_fmt(per_site.get(s, {}).get("auroc")) for s in sites]
        lines.append("| " + " | ".join([label, *cells, *(_fmt(summary.get(k)) for k, _ in SUMMARY_COLUMNS)]) + " |")
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def write_model_card(result: dict[str, Any], study_text: str, out: Path, app_hash: str) -> Path:
    """model_card.json next to the model: what was trained, on which data versions, and how well."""
    settings = result["settings"]
    card = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "study": {"name": settings["study"], "sha256": hashlib.sha256(study_text.encode()).hexdigest()},
        "model": settings["model"],
        "strategy": settings["strategy"] if settings["model"] == "mlp" else None,
        "rounds": settings["rounds"],
        "flower_rounds": result.get("flower_rounds"),
        "sites": {
            name: {"n_train": s["n_train"], "n_test": s["n_test"], "data_version": s["data_version"]}
            for name, s in result["sites"].items()
        },
        "metrics": {
            "federated": {"per_site": result["federated"], "weighted": result["federated_summary"]},
            "site_alone": {
                s: {"per_site": result["local"][s], "weighted": result["local_summary"][s]} for s in result["local"]
            },
            "pooled": {"per_site": result.get("pooled"), "weighted": result.get("pooled_summary")}
            if result.get("pooled")
            else None,
        },
        "traffic_bytes": result.get("traffic"),
        "missing_sites": (result.get("faults") or {}).get("missing_sites", []),
        "faults": result.get("faults"),
        "train_seconds": result.get("train_seconds"),
        "app_hash": app_hash,
        "requester": result.get("requester", {}),  # from the hub gate's ledger, never from run_config
        "audit_heads": result.get("audit_heads", {}),  # per site: check with `fedomop governance verify-log --head`
        "software": {p: _version(p) for p in ("fedomop", "flwr", "xgboost", "torch")},
    }
    path = out / "model_card.json"
    path.write_text(json.dumps(card, indent=2, default=str))
    return path
