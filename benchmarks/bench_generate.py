"""Benchmark ``fedomop sample-data``: wall time and peak memory of a run at a given size.

Runs the real CLI in a child process and samples the resident memory of that process and
its workers every 0.2 s (peak of the sum), so the number includes everything the command
allocates. Usage:

    .venv/bin/python benchmarks/bench_generate.py --persons 1000000 --workers 2 --out /tmp/bench_sites

Prints one JSON line (persons, seconds, peak memory, output size) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from _common import run_monitored


def run(persons: int, out: Path, workers: int, seed: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "fedomop.cli", "sample-data", "--out", str(out), "--persons", str(persons),
               "--seed", str(seed), "--workers", str(workers), "--no-vocabulary"]  # fmt: skip
    result = run_monitored(command, interval=0.2)
    if result.returncode != 0:
        raise SystemExit(f"sample-data failed ({result.returncode}):\n{result.stdout}")
    files = [p for p in out.rglob("*") if p.is_file()]
    return {
        "persons": persons,
        "workers": workers,
        "seconds": round(result.seconds, 1),
        "persons_per_second": round(persons / result.seconds),
        "peak_pss_mib": round(result.peak_pss_mib, 1),
        "peak_rss_one_process_mib": round(result.max_rss_child / 2**20, 1),
        "output_mib": round(sum(p.stat().st_size for p in files) / 2**20, 1),
        "files": len(files),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fedomop_bench_sites"))
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    result = run(args.persons, args.out, args.workers, args.seed)
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
