"""``fedomop map --workers 1`` against ``--workers 2`` on the same site, side by side in one invocation.

Each round maps the site once per worker count (interleaved, so both see the same machine load) with the real
CLI as a child process: wall seconds, CPU seconds of the whole process tree (user+sys from ``wait4``, worker
processes included: they are reaped by the run), peak summed RSS of the tree, and the 1-min load average before
and after. The two databases are then compared table by table (row counts of every table) as a cheap check that
they hold the same rows (tests/harmonize/test_workers.py checks row by row).

Usage (100k persons at site A):

    .venv/bin/fedomop sample-data --out /tmp/fedomop_scale/a100k --persons 100000 --sites site_a --no-vocabulary
    .venv/bin/python benchmarks/bench_workers.py --site-dir /tmp/fedomop_scale/a100k/site_a --chunk-mb 32
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import FEDOMOP, REPO, TreeRun, append_docs, machine, run_monitored  # noqa: E402


def _map(site_dir: Path, db: Path, workers: int, chunk_mb: int, mapping: Path) -> TreeRun:
    for old in (db, db.with_name(db.name + ".vocabulary")):
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    command = [str(FEDOMOP), "map", "--mapping", str(mapping), "--source", str(site_dir), "--db", str(db)]
    command += ["--chunk-mb", str(chunk_mb), "--workers", str(workers), "--no-indexes"]
    run = run_monitored(command)
    if run.returncode != 0:
        raise SystemExit(f"fedomop map --workers {workers} failed:\n{run.stdout[-3000:]}")
    return run


def _counts(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        return {t: int(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables}  # type: ignore[index]
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site-dir", type=Path, required=True)
    parser.add_argument("--mapping", type=Path, default=REPO / "mappings" / "site_a.yaml")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedomop_bench_workers"))
    parser.add_argument("--chunk-mb", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs: dict[int, list[TreeRun]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for workers in (1, 2):
            runs[workers].append(
                _map(args.site_dir, args.work / f"w{workers}.duckdb", workers, args.chunk_mb, args.mapping)
            )
    same = _counts(args.work / "w1.duckdb") == _counts(args.work / "w2.duckdb")
    lines = [
        "| workers | wall s | CPU s | CPU/wall | peak RSS (tree) | load before -> after |",
        "|---|---|---|---|---|---|",
    ]
    for workers, done in runs.items():
        for run in done:
            lines.append(
                f"| {workers} | {run.seconds:.1f} | {run.cpu_seconds:.1f} | {run.cpu_seconds / run.seconds:.2f} | "
                f"{run.peak_rss / 2**20:,.0f} MiB | {run.load_before:.1f} -> {run.load_after:.1f} |"
            )
    one, two = runs[1][-1], runs[2][-1]
    summary = (
        f"--workers 2 / --workers 1: wall {two.seconds / one.seconds:.2f}x, CPU {two.cpu_seconds / one.cpu_seconds:.2f}x; "
        f"same row count in every table: {same}"
    )
    command = f"python benchmarks/bench_workers.py --site-dir {args.site_dir} --chunk-mb {args.chunk_mb} --rounds {args.rounds}"
    section = "\n".join(
        [
            "## `fedomop map --workers 1` vs `--workers 2` (chunks built in worker processes)",
            "",
            f"Machine: {machine()}. Command: `{command}` (`fedomop map --chunk-mb {args.chunk_mb} --no-indexes`,"
            " interleaved rounds).",
            "",
            *lines,
            "",
            summary,
        ]
    )
    print(section)
    if not args.no_docs:
        append_docs(section)


if __name__ == "__main__":
    main()
