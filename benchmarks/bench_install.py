"""Install size and time of each extra: what a site pays for the capabilities it installs.

A site that only maps, validates and reports should not carry PyTorch, Ray and XGBoost with NCCL. This builds
the wheel once, then installs it into a fresh virtualenv per extra (base, [federated], [torch], [simulation],
[demo]) and reports the venv's size on disk and the install's wall time. pip's cache is used (as on a site's
second install); the first, cold run downloads the wheels and takes longer.

    .venv/bin/python benchmarks/bench_install.py [--extras base federated torch] [--write-docs]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, append_docs, load_average, machine

EXTRAS = ("base", "federated", "torch", "simulation", "demo")


def folder_size_mib(folder: Path) -> float:
    """Bytes of every regular file under ``folder`` (symlinks not followed), in MiB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def build_wheel(work: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work), str(REPO)], check=True
    )
    return next(work.glob("fedomop-*.whl"))


def install(wheel: Path, extra: str, venv: Path, python: str) -> float:
    """Seconds to create the venv and install the wheel with ``extra`` into it."""
    started = time.perf_counter()
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    target = str(wheel) if extra == "base" else f"{wheel}[{extra}]"
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", target], check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", nargs="+", default=list(EXTRAS), choices=EXTRAS)
    parser.add_argument("--python", default=sys.executable, help="interpreter for the fresh venvs")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedomop-install-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work)
        for extra in args.extras:
            seconds = install(wheel, extra, work / f"venv-{extra}", args.python)
            size = folder_size_mib(work / f"venv-{extra}")
            rows.append((extra, size, seconds))
            print(f"{extra}: {size:,.0f} MiB in {seconds:,.0f} s", flush=True)
    base = next((size for extra, size, _ in rows if extra == "base"), None)
    table = ["| install | venv size | vs base | install time |", "|---|---:|---:|---:|"]
    for extra, size, seconds in rows:
        name = "`pip install fedomop`" if extra == "base" else f"`pip install 'fedomop[{extra}]'`"
        ratio = f"{size / base:.1f}x" if base else "-"
        table.append(f"| {name} | {size:,.0f} MiB | {ratio} | {seconds:,.0f} s |")
    section = (
        f"## Install size per extra ({time.strftime('%Y-%m-%d')})\n\nMachine: {machine()}. "
        f"1-min load average before/after: {load_before:.1f} / {load_average():.1f}.\n\n" + "\n".join(table) +
        "\n\nCommand: `.venv/bin/python benchmarks/bench_install.py --write-docs`\n"
    )
    print(section)
    if args.write_docs:
        append_docs(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
