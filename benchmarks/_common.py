"""Shared helpers for the benchmark scripts: machine header, load average, medians, peak memory of a process tree.

Every script reports the same things the same way, so the figures in docs/benchmarks.md can be compared:
the machine (``uname -a``, CPUs, RAM, Python, commit), the 1-minute load average around the run (the VM is
shared), the median of several timed runs, and the peak resident memory of the whole process tree of a
command (the command and every worker it starts), sampled with psutil.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
SHARED = Path(os.environ.get("FEDOMOP_SHARED", REPO.parent / "shared"))
PYTHON = sys.executable
FEDOMOP = str(Path(sys.executable).parent / "fedomop")


def memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
    ).stdout.strip()


def uname() -> str:
    return subprocess.run(["uname", "-a"], capture_output=True, text=True, check=False).stdout.strip()


def machine() -> str:
    """One line describing where a figure was measured."""
    return (
        f"`{uname()}`, nproc {os.cpu_count()}, {memory_gib():.1f} GiB RAM, Python {platform.python_version()}, "
        f"commit {commit()}"
    )


def machine_block() -> str:
    """The machine as a markdown list (the header of docs/benchmarks.md)."""
    return (
        f"- `uname -a`: `{uname()}`\n- `nproc`: {os.cpu_count()}\n- memory: {memory_gib():.1f} GiB\n"
        f"- Python {platform.python_version()}"
    )


def load_average() -> float:
    """1-minute load average (on this shared VM, how busy the 2 CPUs were)."""
    return os.getloadavg()[0]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def timed(function: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def median_seconds(runs: int, action: Callable[[], Any]) -> tuple[float, Any]:
    """Median wall seconds of ``runs`` calls and the last result."""
    seconds, result = [], None
    for _ in range(runs):
        elapsed, result = timed(action)
        seconds.append(elapsed)
    return median(seconds), result


def rss_and_pss(process: psutil.Process) -> tuple[int, int]:
    """One process's RSS and PSS in bytes (PSS where the platform reports it, else RSS)."""
    info = process.memory_full_info()
    return info.rss, getattr(info, "pss", info.rss)


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over a process and all its descendants.

    PSS splits pages shared between forked workers, so the PSS sum does not count the interpreter
    and imported libraries once per worker; the RSS sum is the conservative upper bound.
    """
    rss = pss = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            one_rss, one_pss = rss_and_pss(p)
        except psutil.Error:
            continue
        rss += one_rss
        pss += one_pss
    return rss, pss


@dataclass
class TreeRun:
    """What :func:`run_monitored` saw: wall time, exit code, output, peak memory of the process tree."""

    seconds: float
    returncode: int
    stdout: str
    peak_rss: int = 0  # peak of the summed RSS of the tree (bytes)
    peak_pss: int = 0  # peak of the summed PSS of the tree (bytes)
    max_rss_child: int = 0  # ru_maxrss of the largest waited-for process (bytes), exact, no sampling
    cpu_seconds: float = 0.0  # user + system CPU of the child and the children it waited for
    system_seconds: float = 0.0  # the system (kernel) part of cpu_seconds: page faults, I/O, madvise
    minor_faults: int = 0  # page faults served without I/O (memory first touched, or handed back and re-faulted)
    load_before: float = 0.0
    load_after: float = 0.0
    samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_rss_mib(self) -> float:
        return max(self.peak_rss, self.max_rss_child) / 2**20

    @property
    def peak_pss_mib(self) -> float:
        return self.peak_pss / 2**20


def run_monitored(
    command: Sequence[str], *, cwd: Path = REPO, interval: float = 0.1, env: dict[str, str] | None = None
) -> TreeRun:
    """Run a command, sampling the memory of its process tree every ``interval`` s; exact child peak via wait4."""
    load_before = load_average()
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    watched = psutil.Process(child.pid)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(child.stdout.read() if child.stdout else ""))
    reader.start()
    peak_rss = peak_pss = samples = 0
    status = usage = None
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        try:
            rss, pss = tree_memory(watched)
            peak_rss, peak_pss, samples = max(peak_rss, rss), max(peak_pss, pss), samples + 1
        except psutil.Error:
            pass
        time.sleep(interval)
    seconds = time.perf_counter() - start
    reader.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    return TreeRun(
        seconds=seconds,
        returncode=child.returncode,
        stdout="".join(output),
        peak_rss=peak_rss,
        peak_pss=peak_pss,
        max_rss_child=usage.ru_maxrss * 1024 if usage else 0,
        cpu_seconds=usage.ru_utime + usage.ru_stime if usage else 0.0,
        system_seconds=usage.ru_stime if usage else 0.0,
        minor_faults=usage.ru_minflt if usage else 0,
        load_before=load_before,
        load_after=load_average(),
        samples=samples,
    )


def load_chunks_in_the_foreground() -> None:
    """Make ``fedomop map`` in this process load chunk k before building chunk k+1 (no loader thread), so a
    phase's CPU is not charged to the chunk built beside it (profile_phases) or the overlap can be measured
    against its absence (bench_loader)."""
    from fedomop.harmonize.run import chunked

    site_run_init = chunked.SiteRun.__init__

    def in_the_foreground(self: Any, *args: Any, **kwargs: Any) -> None:
        site_run_init(self, *args, **kwargs)
        self.loader = None

    chunked.SiteRun.__init__ = in_the_foreground  # type: ignore[method-assign]


def self_peak_rss_mib() -> float:
    """Peak RSS of this process so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def append_docs(section: str, docs: Path = DOCS) -> None:
    """Append a markdown section to docs/benchmarks.md (created with the machine header if missing)."""
    if not docs.exists():
        docs.write_text(f"# fedomop benchmarks\n\nMachine:\n\n{machine_block()}\n", encoding="utf-8")
    with docs.open("a", encoding="utf-8") as handle:
        handle.write("\n" + section.rstrip("\n") + "\n")


def folder_mib(folder: Path, pattern: str = "*") -> float:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file()) / 2**20
