"""Time ``fedomop validate`` on a site database: the full DQD catalogue as SQL, the pandera schemas, the report.

    # a harmonized sample site (fedomop map ... --db out/site_a.duckdb), three runs, append to docs/benchmarks.md
    .venv/bin/python benchmarks/bench_validate.py --db out/site_a.duckdb --runs 3 --write-docs
    # the Eunomia CDM from shared/ (loaded into a temporary DuckDB first)
    .venv/bin/python benchmarks/bench_validate.py --eunomia --runs 3

Reports the median seconds of each phase, the number of check instances and SQL queries, and the rows in the
database, so the numbers for the sample site and for the 1M-person site can be compared.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from _common import DOCS, SHARED, median_seconds

from fedomop.harmonize.cdm import create_cdm, load_spec
from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.validate.checks import run_checks
from fedomop.harmonize.validate.report import ValidateOptions, build_report, write_report
from fedomop.harmonize.validate.schemas import validate_schemas
from fedomop.harmonize.vocabulary.cdm_io import load_cdm_folder

EUNOMIA = SHARED / "omop" / "eunomia-synthea27nj"


def eunomia_database(folder: Path) -> Path:
    path = folder / "eunomia.duckdb"
    db = connect(path)
    create_cdm(db.engine, constraints="none")
    load_cdm_folder(db, EUNOMIA)
    db.dispose()
    return path


def total_rows(db: Database) -> tuple[int, int]:
    present = set(db.table_names())
    tables = [t for t in load_spec().tables if t in present]
    rows = sum(int(db.scalar(f'SELECT COUNT(*) FROM "{t}"') or 0) for t in tables)
    persons = int(db.scalar("SELECT COUNT(*) FROM person") or 0) if "person" in present else 0
    return rows, persons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="database URL or DuckDB file to validate")
    parser.add_argument("--eunomia", action="store_true", help="validate the Eunomia CDM from shared/")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sample-rows", type=int, default=100_000)
    parser.add_argument("--label", help="name of the database in the results table")
    parser.add_argument("--write-docs", action="store_true", help="append the result to docs/benchmarks.md")
    args = parser.parse_args()
    if not args.db and not args.eunomia:
        parser.error("give --db or --eunomia")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or eunomia_database(Path(tmp))
        label = args.label or ("Eunomia (shared/)" if args.eunomia else Path(str(url)).name)
        db = connect(url, read_only=str(url).endswith(".duckdb"))
        rows, persons = total_rows(db)
        load_before = os.getloadavg()[0]
        checks_s, run = median_seconds(args.runs, lambda: run_checks(db))
        schemas_s, _ = median_seconds(args.runs, lambda: validate_schemas(db, sample_rows=args.sample_rows))
        options = ValidateOptions(sample_rows=args.sample_rows)
        report_s, _ = median_seconds(args.runs, lambda: write_report(build_report(db, options), Path(tmp) / "qa"))
        db.dispose()
    statuses = {s: sum(1 for r in run.results if r.status == s) for s in ("pass", "fail", "not_applicable", "error")}
    line = (
        f"| {label} | {db.dialect} | {persons:,} | {rows:,} | {len(run.results):,} | {run.queries:,} | "
        f"{checks_s:.2f} | {schemas_s:.2f} | {report_s:.2f} |"
    )
    print(line)
    print(f"statuses: {statuses}; 1-min load average before: {load_before:.2f}")
    if args.write_docs:
        command = "benchmarks/bench_validate.py " + (f"--db {args.db}" if args.db else "--eunomia")
        section = (
            f"\n## fedomop validate: full DQD catalogue ({time.strftime('%Y-%m-%d')})\n\n"
            f"Median of {args.runs} runs on {platform.node()} ({os.cpu_count()} CPUs); schemas on up to "
            f"{args.sample_rows:,} rows per table; 1-min load average before: {load_before:.2f}.\n\n"
            "| database | backend | persons | CDM rows | check instances | SQL queries | checks s | schemas s | "
            "full report s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
            f"{line}\n\nCommand: `.venv/bin/python {command} --runs {args.runs} --write-docs`\n"
        )
        with DOCS.open("a", encoding="utf-8") as handle:
            handle.write(section)


if __name__ == "__main__":
    main()
