"""Hospital scale: ``fedomop map`` on a big CSV site against the physical limit, then ``fedomop validate``.

ETL (``etl``): the site's CSV sources are mapped by the real CLI (``fedomop map``: vocabulary load, read,
code resolution, routing, units, lineage, quarantine, reconciliation, load into DuckDB, atomic swap) and, in
the same run and interleaved, the physical-limit baseline reads the very same CSV files with a bare polars
scan and writes them to Parquet (``pl.scan_csv(f, infer_schema=False).sink_parquet(...)``). Both run as child
processes; each reports wall seconds, CPU seconds (user+sys from ``wait4``) and the peak resident memory of
its whole process tree (psutil samples every 0.1 s plus the exact ``ru_maxrss``).

``--parts P`` maps the site as P person-disjoint parts (rows split by a hash of the person column, one
``fedomop map`` run and one DuckDB file per part): ``run_mapping`` holds a whole run in memory (about 1 KiB
per source record), so a single 1M-person run would need ~20 GiB; P parts bound the peak to 1/P of that.
``--merge DB`` then combines the part databases into one (ids shifted by ``part * 100,000,000``) so the
validation measures the whole site.

Validation (``validate``): ``fedomop validate`` (full DQD catalogue, pandera schemas, profile, HTML + JSON
report) on a database, as a child process with its peak memory; median of ``--runs``.

Usage (1M persons at site A; generate first, ~15 min):

    .venv/bin/fedomop sample-data --out /tmp/fedomop_scale/a1m --persons 1000000 --sites site_a --no-vocabulary
    .venv/bin/python benchmarks/bench_scale.py etl --site-dir /tmp/fedomop_scale/a1m/site_a --parts 5 \\
        --merge /tmp/fedomop_scale/a1m.duckdb
    .venv/bin/python benchmarks/bench_scale.py validate --db /tmp/fedomop_scale/a1m.duckdb --runs 1
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    FEDOMOP,
    PYTHON,
    REPO,
    TreeRun,
    append_docs,
    folder_mib,
    load_average,
    machine,
    median,
    run_monitored,
    self_peak_rss_mib,
    timed,
)

MAPPING = REPO / "mappings" / "site_a.yaml"
ID_OFFSET = 100_000_000  # ids of part k are shifted by k * ID_OFFSET when parts are merged (fits INTEGER)
VOCABULARY_TABLES = {
    "concept",
    "vocabulary",
    "domain",
    "concept_class",
    "concept_relationship",
    "relationship",
    "concept_synonym",
    "concept_ancestor",
    "source_to_concept_map",
    "drug_strength",
    "cdm_source",
}

BASELINE = """
import sys, polars as pl
out = sys.argv[1]
for i, path in enumerate(sys.argv[2:]):
    pl.scan_csv(path, infer_schema=False).sink_parquet(f"{out}/{i}.parquet")
"""

PARALLEL_MAPS = """
import subprocess, sys
from concurrent.futures import ThreadPoolExecutor
fedomop, mapping, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
pairs = list(zip(sys.argv[4::2], sys.argv[5::2]))
def run(pair):
    command = [fedomop, "map", "--mapping", mapping, "--source", pair[0], "--db", pair[1]]
    return subprocess.run(command, capture_output=True, text=True)
with ThreadPoolExecutor(jobs) as pool:
    failed = [r for r in pool.map(run, pairs) if r.returncode]
for r in failed:
    print(r.stdout[-2000:], r.stderr[-2000:])
sys.exit(1 if failed else 0)
"""

DUCKDB_BASELINE = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
for i, path in enumerate(sys.argv[2:]):
    con.execute(f"CREATE TABLE t{i} AS SELECT * FROM read_csv('{path}', all_varchar = true, header = true)")
con.close()
"""

SPLIT = """
import sys, polars as pl
source, out, column, parts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for k in range(parts):
    (pl.scan_csv(source, infer_schema=False)
       .filter(pl.col(column).hash(seed=7) % parts == k)
       .sink_csv(f"{out}/part_{k}/" + source.rsplit("/", 1)[1]))
"""


def mapped_csv_files(site_dir: Path) -> list[Path]:
    """The CSV files the site mapping reads (not the generator's ground-truth files)."""
    from harmonize.mapping.loader import load_mapping
    from harmonize.sources.tabular import match_files

    mapping = load_mapping(MAPPING)
    return [p for name, s in mapping.sources.items() for p in match_files(site_dir, s.files, name)]


def checked(run: TreeRun, what: str) -> TreeRun:
    if run.returncode != 0:
        raise SystemExit(f"{what} failed (exit {run.returncode}):\n{run.stdout[-3000:]}")
    return run


def split_site(site_dir: Path, work: Path, parts: int, column: str) -> tuple[list[Path], TreeRun]:
    """Write ``parts`` person-disjoint copies of the mapped CSVs (polars streaming), in one child process."""
    folders = [work / f"part_{k}" for k in range(parts)]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for extra in site_dir.glob("source_to_concept_map.csv"):
            shutil.copy(extra, folder / extra.name)
    start = time.perf_counter()
    runs = [
        checked(run_monitored([PYTHON, "-c", SPLIT, str(f), str(work), column, str(parts)]), f"split {f.name}")
        for f in mapped_csv_files(site_dir)
    ]
    total = TreeRun(
        seconds=time.perf_counter() - start,
        returncode=0,
        stdout="",
        peak_rss=max(r.peak_rss for r in runs),
        max_rss_child=max(r.max_rss_child for r in runs),
        cpu_seconds=sum(r.cpu_seconds for r in runs),
    )
    return folders, total


def baseline(site_dir: Path, work: Path) -> TreeRun:
    out = work / "baseline_parquet"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    files = [str(p) for p in mapped_csv_files(site_dir)]
    run = checked(run_monitored([PYTHON, "-c", BASELINE, str(out), *files]), "polars baseline")
    run.extra["parquet_mib"] = folder_mib(out)
    shutil.rmtree(out, ignore_errors=True)
    return run


def duckdb_baseline(site_dir: Path, work: Path) -> TreeRun:
    """Second reference: the same CSVs as text into a DuckDB file (``read_csv`` + ``CREATE TABLE AS``)."""
    out = work / "baseline.duckdb"
    out.unlink(missing_ok=True)
    files = [str(p) for p in mapped_csv_files(site_dir)]
    run = checked(run_monitored([PYTHON, "-c", DUCKDB_BASELINE, str(out), *files]), "duckdb baseline")
    out.unlink(missing_ok=True)
    return run


def map_part(folder: Path, db: Path) -> TreeRun:
    db.unlink(missing_ok=True)
    command = [FEDOMOP, "map", "--mapping", str(MAPPING), "--source", str(folder), "--db", str(db)]
    run = checked(run_monitored(command), f"fedomop map {folder}")
    run.extra.update(run_counts(db))
    return run


def run_counts(db: Path) -> dict[str, int]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        records, rows, quarantined = con.execute(
            "SELECT records_read, rows_loaded, records_quarantined FROM fedomop_run"
        ).fetchone()
        persons = con.execute("SELECT COUNT(*) FROM person").fetchone()[0]
    finally:
        con.close()
    return {"records": records, "rows": rows, "quarantined": quarantined, "persons": persons}


@dataclass
class EtlRound:
    etl_seconds: float
    etl_cpu: float
    etl_peak_mib: float
    base_seconds: float
    base_cpu: float
    base_peak_mib: float
    records: int
    rows: int
    persons: int
    load: tuple[float, float]
    duck_seconds: float = 0.0
    duck_cpu: float = 0.0


def map_parts(folders: list[Path], dbs: list[Path], jobs: int) -> list[TreeRun]:
    """Map every part: one after another (one TreeRun each), or ``jobs`` at a time under one driver process
    (one TreeRun whose peak memory is that of all concurrent maps together)."""
    if jobs == 1:
        return [map_part(f, db) for f, db in zip(folders, dbs, strict=True)]
    for db in dbs:
        db.unlink(missing_ok=True)
    pairs = [str(p) for f, db in zip(folders, dbs, strict=True) for p in (f, db)]
    run = checked(
        run_monitored([PYTHON, "-c", PARALLEL_MAPS, FEDOMOP, str(MAPPING), str(jobs), *pairs]), "parallel maps"
    )
    counts = [run_counts(db) for db in dbs]
    run.extra.update({key: sum(c[key] for c in counts) for key in counts[0]})
    return [run]


def etl_round(site_dir: Path, folders: list[Path], work: Path, jobs: int = 1) -> tuple[EtlRound, list[Path]]:
    """One baseline run and one ETL run (all parts, ``jobs`` at a time) on the same files."""
    base = baseline(site_dir, work)
    duck = duckdb_baseline(site_dir, work)
    dbs = [work / f"{f.name}.duckdb" for f in folders]
    maps = map_parts(folders, dbs, jobs)
    result = EtlRound(
        etl_seconds=sum(r.seconds for r in maps),
        etl_cpu=sum(r.cpu_seconds for r in maps),
        etl_peak_mib=max(r.peak_rss_mib for r in maps),
        base_seconds=base.seconds,
        base_cpu=base.cpu_seconds,
        base_peak_mib=base.peak_rss_mib,
        records=sum(r.extra["records"] for r in maps),
        rows=sum(r.extra["rows"] for r in maps),
        persons=sum(r.extra["persons"] for r in maps),
        load=(base.load_before, maps[-1].load_after),
        duck_seconds=duck.seconds,
        duck_cpu=duck.cpu_seconds,
    )
    print(json.dumps(result.__dict__), flush=True)
    return result, dbs


def offset_columns(table: str) -> list[str]:
    """Integer key columns (own id, references to clinical rows) that must be shifted when parts are merged."""
    from harmonize.cdm import load_spec

    return [
        f.name
        for f in load_spec().table(table).fields
        if f.datatype == "integer" and f.name.endswith("_id") and not f.name.endswith("concept_id")
    ]


def merge_parts(dbs: list[Path], target: Path) -> float:
    """One DuckDB with every part's rows (part 0 copied whole; clinical rows of part k with ids + k*ID_OFFSET)."""
    import duckdb

    from harmonize.cdm import load_spec

    start = time.perf_counter()
    target.unlink(missing_ok=True)
    shutil.copy(dbs[0], target)
    con = duckdb.connect(str(target))
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    for k, db in enumerate(dbs[1:], start=1):
        con.execute(f"ATTACH '{db}' AS part (READ_ONLY)")
        for table in sorted(tables):
            if table in VOCABULARY_TABLES or table == "fedomop_run":
                continue
            names = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
            shift = set(offset_columns(table)) if table in load_spec().tables else {"omop_id"}
            quoted = {c: '"' + c.replace('"', '""') + '"' for c in names}
            select = ", ".join(f"{quoted[c]} + {k * ID_OFFSET}" if c in shift else quoted[c] for c in names)
            con.execute(f'INSERT INTO "{table}" SELECT {select} FROM part."{table}"')
        con.execute("DETACH part")
    con.close()
    return time.perf_counter() - start


def etl_section(
    site_dir: Path, rounds: list[EtlRound], parts: int, split: TreeRun | None, command: str, jobs: int = 1
) -> str:
    first = rounds[0]
    etl = median([r.etl_seconds for r in rounds])
    base = median([r.base_seconds for r in rounds])
    etl_cpu = median([r.etl_cpu for r in rounds])
    base_cpu = median([r.base_cpu for r in rounds])
    peak = max(r.etl_peak_mib for r in rounds)
    duck = median([r.duck_seconds for r in rounds])
    duck_cpu = median([r.duck_cpu for r in rounds])
    csv_mib = sum(p.stat().st_size for p in mapped_csv_files(site_dir)) / 2**20
    lines = [
        f"{first.persons:,} persons, {first.records:,} source records (CSV rows, {csv_mib:,.0f} MiB), "
        f"{first.rows:,} OMOP rows; {len(rounds)} interleaved round(s), median; "
        + (f"{parts} person-disjoint parts, {jobs} mapped at a time; " if parts > 1 else "")
        + f"1-min load average {min(r.load[0] for r in rounds):.1f}-{max(r.load[1] for r in rounds):.1f}.",
        "",
        "| run | wall s | CPU s | records/s (wall) | OMOP rows/s (wall) | peak RSS MiB (process tree) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `fedomop map` (CSV -> OMOP DuckDB) | {etl:,.1f} | {etl_cpu:,.1f} | {first.records / etl:,.0f} | "
        f"{first.rows / etl:,.0f} | {peak:,.0f} |",
        f"| polars `scan_csv().sink_parquet()` (same CSVs) | {base:,.1f} | {base_cpu:,.1f} | "
        f"{first.records / base:,.0f} | - | {max(r.base_peak_mib for r in rounds):,.0f} |",
        f"| DuckDB `read_csv` -> `CREATE TABLE AS`, text (same CSVs) | {duck:,.1f} | {duck_cpu:,.1f} | "
        f"{first.records / duck:,.0f} | - | - |",
        "",
        f"Ratio ETL / bare read+write: **{etl / base:.1f}x** wall, **{etl_cpu / base_cpu:.1f}x** CPU "
        f"(target 2x); peak memory {peak / 1024:.2f} GiB (target < 8 GiB). Against the DuckDB text load: "
        f"{etl / duck:.1f}x wall, {etl_cpu / duck_cpu:.1f}x CPU.",
    ]
    if split:
        lines.append(
            f"Splitting the CSVs into {parts} parts (polars streaming, not included above): {split.seconds:.0f} s."
        )
    lines += ["", f"Machine: {machine()}.", f"Command: `{command}`"]
    return "\n".join(lines)


def cmd_etl(args: argparse.Namespace) -> None:
    site_dir: Path = args.site_dir
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    split = None
    if args.parts > 1:
        folders, split = split_site(site_dir, work, args.parts, args.person_column)
    else:
        folders = [site_dir]
    rounds, dbs = [], []
    for _ in range(args.runs):
        result, dbs = etl_round(site_dir, folders, work, args.jobs)
        rounds.append(result)
    if args.merge:
        seconds = merge_parts(dbs, args.merge)
        print(f"merged {len(dbs)} part(s) into {args.merge} in {seconds:.0f} s", flush=True)
    if args.parts > 1:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    if not args.keep_dbs:
        for db in dbs:
            db.unlink(missing_ok=True)
    command = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    section = etl_section(site_dir, rounds, args.parts, split, command, args.jobs)
    print(section)
    if args.write_docs:
        append_docs(f"## Scale: ETL against the physical limit ({time.strftime('%Y-%m-%d %H:%M')} UTC)\n\n{section}")


def cmd_validate(args: argparse.Namespace) -> None:
    runs: list[TreeRun] = []
    for _ in range(args.runs):
        out = args.work / "qa"
        shutil.rmtree(out, ignore_errors=True)
        command = [FEDOMOP, "validate", "--db", str(args.db), "--out", str(out)]
        runs.append(checked(run_monitored(command), "fedomop validate"))
        print(json.dumps({"seconds": runs[-1].seconds, "cpu": runs[-1].cpu_seconds, "peak": runs[-1].peak_rss_mib}))
    import duckdb

    con = duckdb.connect(str(args.db), read_only=True)
    persons = con.execute("SELECT COUNT(*) FROM person").fetchone()[0]
    con.close()
    summary = json.loads((args.work / "qa" / "report.json").read_text())
    seconds = median([r.seconds for r in runs])
    phases = summary.get("timings", {})
    slowest = check_timings(args.db) if args.check_timings else []
    section = "\n".join(
        [
            f"{persons:,} persons ({args.db.stat().st_size / 2**20:,.0f} MiB DuckDB file); median of {len(runs)} "
            f"run(s): **{seconds:.0f} s wall** ({median([r.cpu_seconds for r in runs]):.0f} s CPU), peak RSS "
            f"{max(r.peak_rss_mib for r in runs):,.0f} MiB; target < 300 s on 2 cores. 1-min load average "
            f"{min(r.load_before for r in runs):.1f}-{max(r.load_after for r in runs):.1f}. "
            f"Phases of the last run (report.json): checks {phases.get('checks_seconds', 0):.0f} s in "
            f"{phases.get('check_queries', 0)} SQL queries, schemas {phases.get('schemas_seconds', 0):.0f} s, "
            f"profile {phases.get('profile_seconds', 0):.0f} s.",
            *(
                [
                    "",
                    "Slowest check types (a separate `run_checks` pass, seconds): "
                    + ", ".join(f"{name} {sec:.1f}" for name, sec in slowest)
                    + ".",
                ]
                if slowest
                else []
            ),
            "",
            f"Machine: {machine()}.",
            f"Command: `python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}`",
        ]
    )
    print(section)
    if args.write_docs:
        append_docs(f"## Scale: validation ({time.strftime('%Y-%m-%d %H:%M')} UTC)\n\n{section}")


FHIR_MAPPING = REPO / "mappings" / "site_b.yaml"


@functools.cache
def _site_b_mapping():  # type: ignore[no-untyped-def]
    """Parsed once, so timing the reader does not time the YAML parser."""
    from harmonize.mapping.loader import load_mapping

    return load_mapping(FHIR_MAPPING)


def fhir_sources(site_dir: Path) -> list[tuple[str, object, list[Path]]]:
    """(name, source, files) of every NDJSON source of the site-B mapping."""
    from harmonize.sources.tabular import match_files

    mapping = _site_b_mapping()
    return [
        (name, s, match_files(site_dir, s.files, name))
        for name, s in mapping.sources.items()
        if s.format == "fhir_ndjson"
    ]


def read_site_fhir(site_dir: Path, workers: int = 1) -> int:
    """Read every mapped NDJSON source as the engine does (structural check + the mapping's columns)."""
    from harmonize.sources.fhir import read_fhir

    seen = 0
    for name, source, files in fhir_sources(site_dir):
        batch = read_fhir(
            name,
            files,
            site_dir,
            source.resource_type,  # type: ignore[attr-defined]
            source.columns,  # type: ignore[attr-defined]
            fmt="ndjson",
            validation=source.validation,  # type: ignore[attr-defined]
            workers=workers,
        )
        assert batch.balanced()
        seen += batch.seen
    return seen


def sample_fhir_site(site_dir: Path, out: Path, every: int) -> list[tuple[str, bytes]]:
    """Every ``every``-th line of each mapped NDJSON file, written to ``out`` (same names) and returned."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    lines: list[tuple[str, bytes]] = []
    for _name, source, files in fhir_sources(site_dir):
        for path in files:
            kept = [line for i, line in enumerate(path.read_bytes().splitlines()) if line.strip() and i % every == 0]
            (out / path.name).write_bytes(b"\n".join(kept) + b"\n")
            lines += [(source.resource_type, line) for line in kept]  # type: ignore[attr-defined]
    return lines


def validate_with_models(lines: list[tuple[str, bytes]]) -> int:
    """Parse and validate each line with its R4B model; an invalid one is counted (quarantined), not fatal."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    invalid = 0
    for resource_type, line in lines:
        try:
            get_fhir_model_class(resource_type).model_validate(json.loads(line))
        except (ValidationError, ValueError):
            invalid += 1
    return invalid


def check_structure_only(lines: list[tuple[str, bytes]]) -> int:
    """The structural check alone (compiled pydantic-core validator per type), no column extraction."""
    from pydantic_core import ValidationError

    from harmonize.sources.fhir_structure import StructuralValidator

    validators: dict[str, StructuralValidator] = {}
    invalid = 0
    for resource_type, line in lines:
        validator = validators.get(resource_type) or validators.setdefault(
            resource_type, StructuralValidator(resource_type)
        )
        try:
            validator.parse_json(line)
        except ValidationError:
            invalid += 1
    return invalid


def cmd_fhir(args: argparse.Namespace) -> None:
    site_dir: Path = args.site_dir
    ndjson_mib = sum(p.stat().st_size for _n, _s, files in fhir_sources(site_dir) for p in files) / 2**20
    load_before = load_average()
    before = self_peak_rss_mib()
    full_s, total = timed(read_site_fhir, site_dir, 1)
    growth = self_peak_rss_mib() - before
    full_workers_s, _ = timed(read_site_fhir, site_dir, args.workers)
    sample_dir = args.work / "fhir_sample"
    lines = sample_fhir_site(site_dir, sample_dir, args.every)
    validate_with_models(lines[:200])  # warm-up: model classes and validators built
    read_site_fhir(sample_dir, 1)
    reader_s, models_s, reader_cpu, models_cpu, check_s = [], [], [], [], []
    check_structure_only(lines[:200])
    for _ in range(args.runs):
        check_s.append(timed(check_structure_only, lines)[0])
        cpu = time.process_time()
        reader_s.append(timed(read_site_fhir, sample_dir, 1)[0])
        reader_cpu.append(time.process_time() - cpu)
        cpu = time.process_time()
        models_s.append(timed(validate_with_models, lines)[0])
        models_cpu.append(time.process_time() - cpu)
    shutil.rmtree(sample_dir, ignore_errors=True)
    reader, models = median(reader_s), median(models_s)
    cpu_ratio = median(models_cpu) / median(reader_cpu)
    section = "\n".join(
        [
            f"Site-B-style FHIR NDJSON site: {total:,} resources ({ndjson_mib:,.0f} MiB) in the mapped files; "
            f"columns of `mappings/site_b.yaml`, structural validation. 1-min load average "
            f"{load_before:.1f} before / {load_average():.1f} after.",
            "",
            "| run | resources | s | resources/s |",
            "|---|---:|---:|---:|",
            f"| `read_fhir`, whole site, 1 process | {total:,} | {full_s:.1f} | {total / full_s:,.0f} |",
            f"| `read_fhir`, whole site, workers={args.workers} | {total:,} | {full_workers_s:.1f} | "
            f"{total / full_workers_s:,.0f} |",
            f"| `read_fhir`, every {args.every}th line, 1 process (median of {args.runs}) | {len(lines):,} | "
            f"{reader:.2f} | {len(lines) / reader:,.0f} |",
            f"| structural check alone (`StructuralValidator.parse_json`), same lines (median of {args.runs}) | "
            f"{len(lines):,} | {median(check_s):.2f} | {len(lines) / median(check_s):,.0f} |",
            f"| fhir.resources R4B `model_validate` one by one, same lines (median of {args.runs}) | {len(lines):,} | "
            f"{models:.2f} | {len(lines) / models:,.0f} |",
            "",
            f"Ratio on the same lines, measured side by side (interleaved): **{models / reader:.1f}x** wall, "
            f"**{cpu_ratio:.1f}x** CPU time (target >= 10x). Whole-site read (1 process) peak RSS growth: "
            f"{growth:,.0f} MiB.",
            "",
            f"Machine: {machine()}.",
            f"Command: `python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}`",
        ]
    )
    print(section)
    if args.write_docs:
        append_docs(f"## Scale: FHIR NDJSON reader ({time.strftime('%Y-%m-%d %H:%M')} UTC)\n\n{section}")


def check_timings(db: Path, top: int = 8) -> list[tuple[str, float]]:
    """Seconds per check type: the DQD catalogue run one check type at a time, in-process, slowest first."""
    from harmonize.db import connect
    from harmonize.validate.checks.runner import registered_checks, run_checks

    database = connect(db, read_only=True)
    try:
        seconds: dict[str, float] = {}
        for name in registered_checks():
            start = time.perf_counter()
            run_checks(database, checks=[name])
            seconds[name] = time.perf_counter() - start
    finally:
        database.dispose()
    return sorted(seconds.items(), key=lambda item: -item[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    etl = sub.add_parser("etl", help="fedomop map vs polars scan_csv -> parquet on the same CSVs")
    etl.add_argument("--site-dir", type=Path, required=True, help="a site-A-style CSV folder")
    etl.add_argument("--parts", type=int, default=1, help="map as N person-disjoint parts (bounded memory)")
    etl.add_argument("--jobs", type=int, default=1, help="parts mapped at the same time (memory adds up)")
    etl.add_argument("--person-column", default="patient_id")
    etl.add_argument("--runs", type=int, default=1, help="interleaved rounds; medians reported")
    etl.add_argument("--merge", type=Path, help="merge the part databases into this DuckDB file")
    etl.add_argument("--keep-dbs", action="store_true")
    etl.add_argument("--work", type=Path, default=Path("/tmp/fedomop_scale/work"))
    etl.add_argument("--write-docs", action="store_true")
    etl.set_defaults(handler=cmd_etl)
    val = sub.add_parser("validate", help="fedomop validate on a database, with peak memory")
    val.add_argument("--db", type=Path, required=True)
    val.add_argument("--runs", type=int, default=1)
    val.add_argument("--work", type=Path, default=Path("/tmp/fedomop_scale/work"))
    val.add_argument("--check-timings", action="store_true", help="also time each check type in-process")
    val.add_argument("--write-docs", action="store_true")
    val.set_defaults(handler=cmd_validate)
    fhir = sub.add_parser("fhir", help="read_fhir on a big site-B-style NDJSON site vs fhir.resources models")
    fhir.add_argument("--site-dir", type=Path, required=True)
    fhir.add_argument("--every", type=int, default=10, help="sample every Nth line for the side-by-side ratio")
    fhir.add_argument("--workers", type=int, default=2)
    fhir.add_argument("--runs", type=int, default=3)
    fhir.add_argument("--work", type=Path, default=Path("/tmp/fedomop_scale/work"))
    fhir.add_argument("--write-docs", action="store_true")
    fhir.set_defaults(handler=cmd_fhir)
    args = parser.parse_args()
    print(f"load average before: {load_average():.1f}", flush=True)
    args.handler(args)


if __name__ == "__main__":
    main()
