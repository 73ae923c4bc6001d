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
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil


def _tree_memory(process: psutil.Process) -> tuple[int, int]:
    """(sum of PSS, max single-process RSS) over the process and its workers.

    PSS splits pages shared between forked workers, so the sum does not count the
    interpreter and imported libraries once per worker.
    """
    pss = rss = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        pss += getattr(info, "pss", info.rss)
        rss = max(rss, info.rss)
    return pss, rss


def run(persons: int, out: Path, workers: int, seed: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "harmonize.cli", "sample-data", "--out", str(out), "--persons", str(persons),
               "--seed", str(seed), "--workers", str(workers), "--no-vocabulary"]  # fmt: skip
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched = psutil.Process(child.pid)
    peak_pss = peak_rss = 0
    while child.poll() is None:
        try:
            pss, rss = _tree_memory(watched)
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    output = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise SystemExit(f"sample-data failed ({child.returncode}):\n{output}")
    files = [p for p in out.rglob("*") if p.is_file()]
    return {
        "persons": persons,
        "workers": workers,
        "seconds": round(seconds, 1),
        "persons_per_second": round(persons / seconds),
        "peak_pss_mib": round(peak_pss / 2**20, 1),
        "peak_rss_one_process_mib": round(peak_rss / 2**20, 1),
        "output_mib": round(sum(p.stat().st_size for p in files) / 2**20, 1),
        "files": len(files),
        "python": platform.python_version(),
        "cpus": psutil.cpu_count(),
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
