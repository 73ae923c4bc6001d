"""Where `fedomop map`'s CPU goes, phase by phase: CPU and wall seconds of the engine's own stages.

A profiler samples Python frames, but most of a big run is polars' and DuckDB's native threads; this script
instead wraps the engine's phase functions and charges each call the process's CPU time (all threads) and wall
time it took, so nested phases are included in their parents (indented). To keep the phases apart, chunk k's
load runs in the foreground here (a normal run loads it on a second thread while chunk k+1 is built), so the
total is a little above a real run's. Also reported: the bulk-load CPU per target (the OMOP tables together,
each bookkeeping table alone) and the lineage runs stored (docs/mapping.md).

    .venv/bin/python benchmarks/profile_phases.py --source /tmp/fedomop_scale/a1m/site_a
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, load_average, load_chunks_in_the_foreground, machine  # noqa: E402


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


class Phases:
    """CPU and wall seconds and calls per phase label, in the order phases are first entered."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)
        totals = self.totals

        def timed(*args: Any, **kwargs: Any) -> Any:
            entry = totals.setdefault(label, [0.0, 0.0, 0.0])
            cpu, wall = _cpu(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                entry[0] += _cpu() - cpu
                entry[1] += time.perf_counter() - wall
                entry[2] += 1

        setattr(owner, name, timed)


def _instrument(phases: Phases, loads: defaultdict[str, float]) -> None:
    from fedomop.harmonize.ground import db as ground_db
    from fedomop.harmonize.run import build, chunked, chunking, lineage, rules
    from fedomop.harmonize.run import run as run_module

    for owner, name, label in (
        (run_module, "prepare_database", "prepare the database"),
        (run_module, "ensure_store", "vocabulary store"),
        (chunking.StagedSite, "stage", "split into chunks"),
        (chunking, "regular_file_shape", "  row check"),
        (chunked.SiteRun, "_map_chunk", "build + load chunks"),
        (chunked, "read_sources", "  read a chunk"),
        (build.SiteBuild, "build_keyed", "  keyed tables"),
        (build.SiteBuild, "build_events", "  event tables"),
        (build.SiteBuild, "build_derived", "  derived tables"),
        (rules, "_join_key", "    person/visit key joins"),
        (rules.RuleEvaluator, "_resolve", "    code resolution"),
        (rules.RuleEvaluator, "_convert_units", "    unit conversion"),
        (rules.RuleEvaluator, "_drop_problems", "    quarantine of problems"),
        (rules.RuleEvaluator, "_drop_duplicates", "    duplicates"),
        (build.SiteBuild, "_finish", "    finish (ids, order)"),
        (lineage.RecordLedger, "mark_loaded", "  ledger"),
        (chunked.SiteRun, "_load", "  load a chunk"),
        (chunked, "load_tables", "    OMOP tables"),
        (lineage.LineageFiles, "number", "    lineage to runs"),
        (run_module, "build_eras", "eras"),
        (run_module, "add_primary_keys", "primary keys"),
        (run_module, "create_indexes", "indexes"),
    ):
        phases.wrap(owner, name, label)

    bulk_load = ground_db.Database.load_arrow

    def counted_load(self: Any, table: str, data: Any, **kwargs: Any) -> int:
        cpu = _cpu()
        try:
            return bulk_load(self, table, data, **kwargs)
        finally:
            loads["OMOP tables" if not table.startswith("fedomop_") else table] += _cpu() - cpu

    ground_db.Database.load_arrow = counted_load  # type: ignore[method-assign]
    load_chunks_in_the_foreground()  # chunk k's load is not charged to chunk k+1's build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mapping", type=Path, default=REPO / "mappings" / "site_a.yaml")
    parser.add_argument("--source", type=Path, required=True)
    args = parser.parse_args()

    import duckdb

    from fedomop.harmonize.run import run as run_module

    phases, loads = Phases(), defaultdict[str, float](float)
    _instrument(phases, loads)
    load_before = load_average()
    cpu, wall = _cpu(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "site.duckdb"
        report = run_module.run_mapping(args.mapping, args.source, str(database))
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
        with duckdb.connect(str(database), read_only=True) as con:
            runs = con.execute("SELECT count(*), sum(row_count) FROM fedomop_lineage_row").fetchone()
    stored, rows = runs if runs is not None else (0, 0)
    lines = [
        f"`fedomop map` of {args.source.name} ({report.rows_loaded:,} OMOP rows, {report.chunks} chunk(s)): "
        f"**{cpu:.1f} CPU s, {wall:.1f} s wall** (loads in the foreground); 1-min load average {load_before:.1f} "
        f"before, {load_average():.1f} after.",
        "",
        "| phase | CPU s | wall s | calls |",
        "|---|---:|---:|---:|",
        *(
            f"| {label.replace('  ', '&nbsp;&nbsp;')} | {c:.1f} | {w:.1f} | {int(n)} |"
            for label, (c, w, n) in phases.totals.items()
        ),
        "",
        "Bulk-load CPU s per target: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in loads.items() if seconds >= 0.05),
        f"Lineage: {rows:,} OMOP rows stored as {stored:,} runs ({rows / max(stored, 1):.1f} rows a run).",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/profile_phases.py {' '.join(sys.argv[1:])}`",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
