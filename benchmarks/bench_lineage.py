"""Lineage stored as text against lineage stored as integers: what DuckDB pays to write each, and the disk.

The same N lineage rows (one per OMOP row of a site, all from CSV rows) are inserted into a new DuckDB file
the way ``fedomop map`` loads them (Arrow registered, ``INSERT ... SELECT`` with the run id and table name as
query parameters, then a checkpoint), in three forms:

- text: ``omop_id, source, source_file, source_row`` (what fedomop stored before: the file path and the row
  number written out for every row);
- rows: integers, one row per OMOP row (the form before runs, ``row_count`` 1);
- runs: ``omop_id, file_no, source_row_no, source_row_text, row_count`` (what it stores now,
  docs/mapping.md: one row per run of OMOP rows from consecutive source rows; the text column is NULL for a CSV
  row), plus the one-row ``fedomop_lineage_file``.

The OMOP ids are 1..N; the source rows come in stretches of ``--run-length`` consecutive rows (a patient's
rows in an export sorted by patient; ~8 at site A), the stretches in shuffled order, so that each is one run.

Each form runs in its own child process (its CPU time, all threads), rounds interleaved; median reported. The
``fedomop_lineage`` view is then read back over the integer forms and compared with the text rows.

    .venv/bin/python benchmarks/bench_lineage.py --rows 2923038 --rounds 3 --run-length 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, machine, median  # noqa: E402

TEXT_DDL = "run_id VARCHAR, omop_table VARCHAR, omop_id BIGINT, source VARCHAR, source_file VARCHAR, source_row VARCHAR"


def _child(form: str, rows: int, run_length: int, path: str) -> None:
    import duckdb
    import numpy as np
    import polars as pl

    from fedomop.harmonize.run import lineage
    from fedomop.harmonize.run.lineage import (
        LINEAGE_FILE_TABLE,
        LINEAGE_ROW_TABLE,
        LINEAGE_VIEW_SQL,
        LineageFiles,
    )

    ids = pl.int_range(1, rows + 1, eager=True)
    stretches = np.random.default_rng(7).permutation(-(-rows // run_length))  # each: run_length source rows
    numbers = (stretches[:, None] * run_length + np.arange(1, run_length + 1)).ravel()[:rows]
    text = pl.DataFrame({"omop_id": ids, "source": "observations", "source_file": "observations.csv",
                         "source_row": pl.Series(numbers).cast(pl.String)})  # fmt: skip
    con = duckdb.connect(path)
    started, cpu = time.perf_counter(), time.process_time()
    if form == "text":
        con.execute(f"CREATE TABLE fedomop_lineage ({TEXT_DDL})")
        con.register("batch", text.to_arrow())
        con.execute("INSERT INTO fedomop_lineage SELECT ?, ?, * FROM batch", ["run", "measurement"])
    else:
        con.execute(f"CREATE TABLE {LINEAGE_FILE_TABLE} (file_no INTEGER, source VARCHAR, source_file VARCHAR)")
        con.execute(
            f"CREATE TABLE {LINEAGE_ROW_TABLE} (run_id VARCHAR, omop_table VARCHAR, omop_id BIGINT, "
            "file_no INTEGER, source_row_no BIGINT, source_row_text VARCHAR, row_count INTEGER)"
        )
        con.execute(LINEAGE_VIEW_SQL)
        if form == "rows":  # the form before runs: one stored row per OMOP row
            lineage._runs = lambda stored: stored.with_columns(pl.lit(1, pl.Int32).alias("row_count"))
        stored, files = LineageFiles().number(text)  # the conversion is part of the cost
        con.register("files", files.to_arrow())
        con.register("batch", stored.to_arrow())
        con.execute(f"INSERT INTO {LINEAGE_FILE_TABLE} SELECT * FROM files")
        con.execute(f"INSERT INTO {LINEAGE_ROW_TABLE} SELECT ?, ?, * FROM batch", ["run", "measurement"])
    con.execute("CHECKPOINT")
    con.close()
    print(json.dumps({"wall": time.perf_counter() - started, "cpu_in_process": time.process_time() - cpu}))


def _same_rows(text_db: Path, integer_db: Path) -> bool:
    import duckdb

    con = duckdb.connect()
    con.execute(f"ATTACH '{text_db}' AS t (READ_ONLY)")
    con.execute(f"ATTACH '{integer_db}' AS i (READ_ONLY)")
    differ = con.execute(
        "SELECT count(*) FROM (SELECT * FROM t.fedomop_lineage EXCEPT ALL SELECT * FROM i.fedomop_lineage)"
    ).fetchone()
    con.close()
    return differ is not None and differ[0] == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_923_038, help="lineage rows (default: 100k-person site A)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-length", type=int, default=8, help="consecutive source rows per stretch")
    parser.add_argument("--child", nargs=2, metavar=("FORM", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.rows, args.run_length, args.child[1])
        return
    results: dict[str, list[dict[str, float]]] = {"text": [], "rows": [], "runs": []}
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for form in results:
                path = Path(tmp) / f"{form}.duckdb"
                path.unlink(missing_ok=True)
                child = subprocess.Popen([sys.executable, __file__, "--rows", str(args.rows), "--run-length",
                                          str(args.run_length), "--child", form, str(path)],
                                         stdout=subprocess.PIPE, text=True)  # fmt: skip
                out, _ = child.communicate()
                if child.returncode:
                    raise SystemExit(f"the {form} run failed")
                measured = json.loads(out.strip().splitlines()[-1])
                measured["mib"] = path.stat().st_size / 2**20
                results[form].append(measured)
        same = all(_same_rows(Path(tmp) / "text.duckdb", Path(tmp) / f"{form}.duckdb") for form in ("rows", "runs"))
    lines = [
        f"{args.rows:,} lineage rows, one DuckDB file each; median of {args.rounds} interleaved rounds; "
        f"1-min load average {load_before:.1f} before, {load_average():.1f} after (2 CPUs).",
        "",
        "| lineage stored as | wall s | CPU s (the process, all threads) | file MiB |",
        "|---|---:|---:|---:|",
    ]
    for form, runs in results.items():
        lines.append(
            f"| {form} | {median([r['wall'] for r in runs]):.2f} | {median([r['cpu_in_process'] for r in runs]):.2f} "
            f"| {median([r['mib'] for r in runs]):.1f} |"
        )

    def ratio(form: str, base: str, key: str) -> float:
        return median([r[key] for r in results[form]]) / median([r[key] for r in results[base]])

    lines.append("")
    for form, base in (("rows", "text"), ("runs", "text"), ("runs", "rows")):
        lines.append(
            f"{form} / {base}: {ratio(form, base, 'wall'):.2f}x wall, {ratio(form, base, 'cpu_in_process'):.2f}x "
            f"CPU, {ratio(form, base, 'mib'):.2f}x disk"
        )
    verdict = "the same rows as" if same else "OTHER ROWS THAN"
    lines += [
        "",
        f"The fedomop_lineage view over both integer forms gives {verdict} the text.",
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/bench_lineage.py {' '.join(sys.argv[1:])}`",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
