"""Harmonize throughput: ``run_mapping`` on the sample sites (and optionally a larger generated set).

Each run happens in a fresh child process (so the peak RSS of one run is measured alone, via ``os.wait4``)
and maps one site end to end: vocabulary load, read, resolve, route, load into a new DuckDB file, atomic
swap. Reported per run: source records, records/s (CSV rows/s or FHIR resources/s), OMOP rows loaded/s,
wall seconds (of which reading the sources), peak RSS.

``--persons N`` also generates sites A (CSV) and B (FHIR NDJSON) with N persons in total
(``fedomop sample-data --persons N --sites ...``) into a temporary folder and maps them.

Usage: .venv/bin/python benchmarks/bench_etl.py [--persons 56000] [--write-docs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import DOCS, REPO, run_monitored

SITES = ("site_a", "site_b", "site_c", "site_d")
KIND = {"site_a": "CSV rows", "site_b": "FHIR resources", "site_c": "CSV rows", "site_d": "FHIR resources"}

CHILD = """
import json, sys, time
from fedomop.harmonize.run import run_mapping
mapping, source, db = sys.argv[1:4]
report = run_mapping(mapping, source, db)
print(json.dumps({"records": report.records_read, "rows": report.rows_loaded, "seconds": report.seconds,
                  "read_seconds": report.read_seconds, "quarantined": report.records_quarantined,
                  "balanced": report.balanced}))
"""


def run_site(site: str, source: Path, workdir: Path) -> dict[str, object]:
    """Map one site in a child process; returns its report numbers and the peak RSS of the child's process tree."""
    db = workdir / f"{site}.duckdb"
    mapping = str(REPO / "mappings" / f"{site}.yaml")
    child = run_monitored([sys.executable, "-c", CHILD, mapping, str(source), str(db)])
    if child.returncode != 0:
        raise SystemExit(f"{site}: run_mapping failed (exit {child.returncode})")
    result = json.loads([line for line in child.stdout.splitlines() if line.startswith("{")][-1])
    result.update(site=site, peak_rss_mib=child.peak_rss_mib, kind=KIND[site])
    return result


def generate(persons: int, out: Path) -> float:
    started = dt.datetime.now()
    subprocess.run(
        [
            str(Path(sys.executable).parent / "fedomop"),
            "sample-data",
            "--out",
            str(out),
            "--persons",
            str(persons),
            "--sites",
            "site_a",
            "--sites",
            "site_b",
            "--no-vocabulary",
        ],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return (dt.datetime.now() - started).total_seconds()


def table(results: list[dict[str, object]]) -> str:
    lines = [
        "| site | records | kind | records/s | OMOP rows | rows/s | wall s (read s) | peak RSS MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        seconds = float(r["seconds"])  # type: ignore[arg-type]
        lines.append(
            f"| {r['label']} | {r['records']:,} | {r['kind']} | {int(r['records']) / seconds:,.0f} | "  # type: ignore[call-overload]
            f"{r['rows']:,} | {int(r['rows']) / seconds:,.0f} | {seconds:.1f} ({float(r['read_seconds']):.1f}) | "  # type: ignore[call-overload]
            f"{float(r['peak_rss_mib']):,.0f} |"  # type: ignore[arg-type]
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=0, help="also generate and map sites A+B with N persons")
    parser.add_argument("--write-docs", action="store_true", help="append the result to docs/benchmarks.md")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for site in SITES:
            results.append({**run_site(site, REPO / "sample_data" / site, work), "label": f"{site} (sample)"})
            print(json.dumps(results[-1]))
        generated = None
        if args.persons:
            big = work / "big"
            generated = generate(args.persons, big)
            for site in ("site_a", "site_b"):
                results.append(
                    {**run_site(site, big / site, work), "label": f"{site} ({args.persons:,} persons in all)"}
                )
                print(json.dumps(results[-1]))
    text = table(results)
    print(text)
    if args.write_docs:
        command = "`.venv/bin/python benchmarks/bench_etl.py" + (f" --persons {args.persons}" if args.persons else "")
        section = [
            f"\n## Harmonize: `run_mapping` throughput ({dt.date.today().isoformat()})\n",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Each run is "
            "a fresh process mapping one site end to end (vocabulary load, read, resolve codes in DuckDB, route by "
            "domain, units, lineage/quarantine, load a new DuckDB file, atomic swap); records/s counts source "
            "records (CSV rows or FHIR resources), rows/s the OMOP rows written (bookkeeping tables excluded).\n",
            text + "\n",
            f"Command: {command} --write-docs`"
            + (
                f" (generating the {args.persons:,}-person sites took {generated:.0f} s, not included)."
                if generated
                else "."
            ),
        ]
        with DOCS.open("a", encoding="utf-8") as handle:
            handle.write("\n".join(section) + "\n")


if __name__ == "__main__":
    main()
