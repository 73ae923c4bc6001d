"""Chunk k loaded on a second thread while chunk k+1 is built (the default) against loaded in the foreground.

Each run is ``run_mapping`` in a fresh child process (CPU of all its threads, wall), modes interleaved per round,
so both see the same machine load. Does the overlap pay on this machine's cores?

    .venv/bin/python benchmarks/bench_loader.py --site-dir /tmp/fedomop_scale/a1m/site_a --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, load_average, load_chunks_in_the_foreground, machine, median  # noqa: E402

MODES = ("background", "foreground")


def _child(site_dir: Path, mode: str) -> None:
    from fedomop.harmonize.run.run import run_mapping

    if mode == "foreground":
        load_chunks_in_the_foreground()
    with tempfile.TemporaryDirectory() as tmp:
        before, started = os.times(), time.perf_counter()
        run_mapping(REPO / "mappings" / "site_a.yaml", site_dir, str(Path(tmp) / "site.duckdb"))
        after = os.times()
    cpu = after.user - before.user + after.system - before.system
    print(json.dumps({"cpu": cpu, "wall": time.perf_counter() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.site_dir, args.child)
        return
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    loads = [load_average()]
    for _ in range(args.rounds):
        for mode in MODES:
            command = [sys.executable, __file__, "--site-dir", str(args.site_dir), "--child", mode]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"the {mode} run failed:\n{done.stderr[-2000:]}")
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            loads.append(load_average())
    lines = [
        f"{args.rounds} interleaved round(s); 1-min load average {min(loads):.1f}-{max(loads):.1f} (2 CPUs).",
        "",
        "| chunk load | wall s (each round) | CPU s (each round) | median wall | median CPU |",
        "|---|---|---|---:|---:|",
    ]
    for mode, results in runs.items():
        walls, cpus = [r["wall"] for r in results], [r["cpu"] for r in results]
        lines.append(
            f"| {mode} | {' / '.join(f'{w:.1f}' for w in walls)} | {' / '.join(f'{c:.1f}' for c in cpus)} "
            f"| {median(walls):.1f} | {median(cpus):.1f} |"
        )
    lines += ["", f"Machine: {machine()}.", f"Command: `python benchmarks/bench_loader.py {' '.join(sys.argv[1:])}`"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
