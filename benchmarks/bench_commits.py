"""``fedomop map`` of one site by two versions of fedomop, side by side in one invocation (before/after a change).

Each given commit is checked out into a temporary git worktree and run with this checkout's interpreter
(``python -m fedomop`` with ``PYTHONPATH`` on that worktree), so the only difference is fedomop's own code.
Rounds interleave the commits, so each sees the same machine load. Per run: wall seconds, CPU seconds of the
whole process tree (user+sys from ``wait4``), peak summed RSS of the tree, the database's size on disk, and
the 1-min load average before and after. The databases of the last round are compared table by table (row
counts of the OMOP tables) as a check that both versions loaded the same rows.

    .venv/bin/python benchmarks/bench_commits.py --site-dir /tmp/a100k/site_a --commits a64531a HEAD --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, TreeRun, machine, median, run_monitored  # noqa: E402

OMOP_COUNTED = ("person", "visit_occurrence", "condition_occurrence", "drug_exposure", "measurement", "episode")


def _checkout(commit: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), commit], check=True,
                   capture_output=True)  # fmt: skip
    return into


def _map(tree: Path, site_dir: Path, mapping: Path, db: Path, extra: list[str]) -> TreeRun:
    for old in (db, db.with_name(db.name + ".vocabulary")):
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    command = [sys.executable, "-m", "fedomop", "map", "--mapping", str(mapping), "--source", str(site_dir),
               "--db", str(db), *extra]  # fmt: skip
    run = run_monitored(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
    if run.returncode != 0:
        raise SystemExit(f"fedomop map at {tree} failed:\n{run.stdout[-3000:]}")
    return run


def _counts(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in OMOP_COUNTED}  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site-dir", type=Path, required=True)
    parser.add_argument("--commits", nargs=2, required=True, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--mapping", default="mappings/site_a.yaml", help="relative to each checkout")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--map-args", default="", help="extra fedomop map arguments, e.g. '--no-indexes'")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedomop_bench_commits_"))
    trees: dict[str, Path] = {}
    try:
        for label, commit in zip(("before", "after"), args.commits, strict=True):
            trees[label] = _checkout(commit, work / label)
        runs: dict[str, list[TreeRun]] = {label: [] for label in trees}
        sizes: dict[str, float] = {}
        for _ in range(args.rounds):
            for label, tree in trees.items():
                db = work / f"{label}.duckdb"
                runs[label].append(_map(tree, args.site_dir, tree / args.mapping, db, args.map_args.split()))
                sizes[label] = db.stat().st_size / 2**20
        counts = {label: _counts(work / f"{label}.duckdb") for label in trees}
        lines = [
            "| fedomop map | commit | wall s | CPU s | peak RSS MiB | database MiB | load before -> after |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for label, commit in zip(trees, args.commits, strict=True):
            done = runs[label]
            lines.append(
                f"| {label} | `{commit}` | {median([r.seconds for r in done]):.1f} | "
                f"{median([r.cpu_seconds for r in done]):.1f} | {median([r.peak_rss_mib for r in done]):,.0f} | "
                f"{sizes[label]:,.0f} | {done[0].load_before:.1f} -> {done[-1].load_after:.1f} |"
            )
        before, after = runs["before"], runs["after"]
        lines += [
            "",
            f"after / before (median of {args.rounds} interleaved rounds): "
            f"{median([r.seconds for r in after]) / median([r.seconds for r in before]):.2f}x wall, "
            f"{median([r.cpu_seconds for r in after]) / median([r.cpu_seconds for r in before]):.2f}x CPU; "
            f"OMOP row counts {'the same' if counts['before'] == counts['after'] else 'DIFFER: ' + str(counts)}.",
            "",
            f"Machine: {machine()}.",
            f"Command: `python benchmarks/bench_commits.py {' '.join(sys.argv[1:])}`",
        ]
        print("\n".join(lines))
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
