"""Federated scale-out in simulation: the same persons as 4 sites and as 20 sites.

Generates the four sample sites at ``--persons`` (default 22,400 = 4x the shipped sample), maps each with
``run_mapping``, then splits every site database into ``--split`` person-disjoint databases (rows of every
table with a ``person_id`` kept where ``hash(person_id) % split == part``), so 4 sites become 20 with the
same persons in all. Each mode of ``bench_federated.py`` then trains once on the 4 sites and once on the 20,
in Flower's simulation engine (one Ray actor per site), and the table shows time and bytes per round and
AUROC (federated, pooled, best site alone) side by side.

Usage: .venv/bin/python benchmarks/bench_federated_scale.py [--persons 22400] [--split 5] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import FEDOMOP, REPO, append_docs, load_average, machine  # noqa: E402
from bench_federated import MODES, run_mode  # noqa: E402

SITES = ("site_a", "site_b", "site_c", "site_d")
# Flower's simulation engine dispatches messages to ClientApps from a ThreadPoolExecutor with the default
# max_workers (vce_api.run_api), so at most min(32, CPUs + 4) ClientApps run at once.
SIMULATION_CONCURRENCY = min(32, (os.cpu_count() or 1) + 4)
HIST_LIMIT = (
    f"histogram XGBoost needs every site inside XGBoost's federated allreduce at the same time, but the "
    f"simulation runs at most {SIMULATION_CONCURRENCY} ClientApps at once on this machine (min(32, CPUs + 4)), "
    "so the other sites never join and the run waits for XGBoost's 600 s timeout"
)


def generate_and_map(persons: int, folder: Path) -> list[Path]:
    from harmonize.engine import run_mapping

    extract = folder / "extract"
    subprocess.run(
        [FEDOMOP, "sample-data", "--out", str(extract), "--persons", str(persons), "--no-vocabulary"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    paths = []
    for site in SITES:
        path = folder / f"{site}.duckdb"
        run_mapping(REPO / "mappings" / f"{site}.yaml", extract / site, str(path))
        paths.append(path)
    shutil.rmtree(extract)
    return paths


def split_by_person(db: Path, parts: int, folder: Path) -> list[Path]:
    """``parts`` copies of a site database, each keeping a person-disjoint share of the clinical rows."""
    import duckdb

    out = []
    for part in range(parts):
        path = folder / f"{db.stem}_{part}.duckdb"
        shutil.copy(db, path)
        con = duckdb.connect(str(path))
        tables = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT table_name FROM duckdb_columns() WHERE column_name = 'person_id'"
            ).fetchall()
        ]
        for table in tables:
            con.execute(f'DELETE FROM "{table}" WHERE hash(person_id) % {parts} <> {part}')
        con.execute("CHECKPOINT")
        con.close()
        out.append(path)
    return out


def person_counts(paths: list[Path]) -> list[int]:
    import duckdb

    counts = []
    for path in paths:
        con = duckdb.connect(str(path), read_only=True)
        counts.append(con.execute("SELECT COUNT(*) FROM person").fetchone()[0])
        con.close()
    return counts


def markdown(rows: list[dict], persons: int, command: str, loads: tuple[float, float], sizes: dict) -> str:
    lines = [
        f"Same {persons:,} generated persons as 4 sites (persons per site {sizes[4]}) and as 20 sites "
        f"(each site split 5 ways by person; {min(sizes[20])}-{max(sizes[20])} persons per site). One run per "
        f"cell; 1-min load average {loads[0]:.1f} before / {loads[1]:.1f} after.",
        "",
        "| mode | sites | Flower rounds | train s | s / round | bytes / round | AUROC federated | AUROC pooled "
        "| AUROC best site alone | wall s (incl. Ray start, pooled + site-alone models) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['sites']} | {r['flower_rounds']} | {r['train_s']:.1f} | {r['s_per_round']:.2f} | "
            f"{r['bytes_per_round']:,.0f} | {r['auroc_federated']:.3f} | {r['auroc_pooled']:.3f} | "
            f"{r['auroc_local_best']:.3f} | {r['wall_s']:.0f} |"
        )
    lines += ["", f"Machine: {machine()}.", f"Command: `{command}`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=22_400)
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--modes", nargs="*", default=["xgboost-hist", "xgboost-bagging", "mlp/fedavg"])
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    rows: list[dict] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        four = generate_and_map(args.persons, folder)
        (folder / "split").mkdir()
        twenty = [p for db in four for p in split_by_person(db, args.split, folder / "split")]
        sizes = {4: person_counts(four), 20: person_counts(twenty)}
        load_before = load_average()
        for label, options in MODES:
            if label not in args.modes:
                continue
            for sites in (four, twenty):
                if options["model"] == "xgboost-hist" and len(sites) > SIMULATION_CONCURRENCY:
                    print(f"skipped {label} on {len(sites)} sites: {HIST_LIMIT}", flush=True)
                    skipped.append(f"{label} on {len(sites)} sites")
                    continue
                started = time.perf_counter()
                row = run_mode(label, options, sites, folder / f"out{len(sites)}")
                row.update(sites=len(sites), wall_s=time.perf_counter() - started)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "result"}, default=str), flush=True)
        load_after = load_average()
    command = " ".join([".venv/bin/python benchmarks/bench_federated_scale.py", *sys.argv[1:]])
    section = markdown(rows, args.persons, command, (load_before, load_after), sizes)
    if skipped:
        section += f"\n\nNot run: {', '.join(skipped)}: {HIST_LIMIT}."
    print(section)
    if args.write_docs:
        append_docs(f"## Federated scale-out in simulation: 4 vs 20 sites ({time.strftime('%Y-%m-%d')})\n\n{section}")


if __name__ == "__main__":
    main()
