"""Hospital scale: ``fedomop map`` on a big CSV site against the physical limit, then ``fedomop validate``.

ETL (``etl``): the site's CSV sources are mapped by the real CLI (``fedomop map``: vocabulary load, read,
code resolution, routing, units, lineage, quarantine, reconciliation, load into DuckDB, atomic swap) and, in
the same run and interleaved, the physical-limit baseline reads the very same CSV files with a bare polars
scan and writes them to Parquet (``pl.scan_csv(f, infer_schema=False).sink_parquet(...)``). Both run as child
processes; each reports wall seconds, CPU seconds (user+sys from ``wait4``) and the peak resident memory of
its whole process tree (psutil samples every 0.1 s plus the exact ``ru_maxrss``).

The map is one ``fedomop map`` run: a site bigger than ``--chunk-mb`` MiB of CSV is mapped in person-disjoint
chunks (each source streamed once into per-chunk Parquet, then chunk after chunk into the same database), so
memory stays bounded. A third reference shows what the output alone costs: the mapped database's OMOP tables and
lineage copied into a new DuckDB file (``CREATE TABLE AS SELECT``, no mapping work): the floor for any ETL that
writes the same rows into DuckDB. ``--db`` keeps the mapped database (for ``validate``).

Validation (``validate``): ``fedomop validate`` (full DQD catalogue, pandera schemas, profile, HTML + JSON
report) on a database, as a child process with its peak memory; median of ``--runs``.

FHIR map (``fhir-map``): ``fedomop map`` of a site-B-style FHIR NDJSON site (``mappings/site_b.yaml``) in
chunks, with its wall time, CPU time and peak memory; ``--code DIR`` runs the same command from another
checkout (e.g. the commit before a change, through ``git worktree``) in the same interleaved rounds.

Usage (1M persons at site A; generate first, ~15 min):

    .venv/bin/fedomop sample-data --out /tmp/fedomop_scale/a1m --persons 1000000 --sites site_a --no-vocabulary
    .venv/bin/python benchmarks/bench_scale.py etl --site-dir /tmp/fedomop_scale/a1m/site_a \\
        --db /tmp/fedomop_scale/a1m.duckdb
    .venv/bin/python benchmarks/bench_scale.py validate --db /tmp/fedomop_scale/a1m.duckdb --runs 1
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
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

from fedomop.harmonize.run.chunking import DEFAULT_CHUNK_MB  # noqa: E402

MAPPING = REPO / "mappings" / "site_a.yaml"
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

DUCKDB_BASELINE = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
for i, path in enumerate(sys.argv[2:]):
    con.execute(f"CREATE TABLE t{i} AS SELECT * FROM read_csv('{path}', all_varchar = true, header = true)")
con.close()
"""

OUTPUT_FLOOR = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute(f"ATTACH '{sys.argv[2]}' AS mapped (READ_ONLY)")
for table in sys.argv[3:]:
    con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM mapped."{table}"')
con.close()
"""


def mapped_csv_files(site_dir: Path) -> list[Path]:
    """The CSV files the site mapping reads (not the generator's ground-truth files)."""
    from fedomop.harmonize.mapping.loader import load_mapping
    from fedomop.harmonize.run.files import resolve_files

    mapping = load_mapping(MAPPING)
    files = resolve_files(mapping, site_dir)
    return [p for name in mapping.sources for p in files.of(name)]


def checked(run: TreeRun, what: str) -> TreeRun:
    if run.returncode != 0:
        raise SystemExit(f"{what} failed (exit {run.returncode}):\n{run.stdout[-3000:]}")
    return run


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


def map_site(
    site_dir: Path,
    db: Path,
    chunk_mb: int,
    mapping: Path = MAPPING,
    code: Path | None = None,
    extra: tuple[str, ...] = (),
) -> TreeRun:
    """One ``fedomop map`` run (from this checkout, or from the checkout ``code``) with its counts and chunks."""
    db.unlink(missing_ok=True)
    args = ["map", "--mapping", str(mapping), "--source", str(site_dir), "--db", str(db), "--chunk-mb", str(chunk_mb)]
    args += list(extra)
    if code is None:
        run = run_monitored([FEDOMOP, *args])
    else:  # the other checkout's package first on the path, run from there
        env = {**os.environ, "PYTHONPATH": str(code)}
        run = run_monitored([PYTHON, "-m", "fedomop.cli", *args], cwd=code, env=env)
    run = checked(run, f"fedomop map {site_dir} ({code or 'this checkout'})")
    run.extra.update(run_counts(db))
    run.extra["chunks"] = _chunks_of(run.stdout)
    return run


def output_floor(db: Path, work: Path) -> TreeRun:
    """The mapped OMOP tables and lineage (not the vocabulary) copied into a new DuckDB file."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    finally:
        con.close()
    written = [t for t in tables if t not in VOCABULARY_TABLES and t != "fedomop_run"]
    out = work / "floor.duckdb"
    out.unlink(missing_ok=True)
    run = checked(run_monitored([PYTHON, "-c", OUTPUT_FLOOR, str(out), str(db), *written]), "output floor")
    out.unlink(missing_ok=True)
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
    floor_seconds: float = 0.0
    floor_cpu: float = 0.0
    chunks: int = 1


def etl_round(site_dir: Path, db: Path, work: Path, chunk_mb: int, extra: tuple[str, ...] = ()) -> EtlRound:
    """The references and one ETL run (``fedomop map`` with the options ``extra``) on the same files, interleaved."""
    base = baseline(site_dir, work)
    duck = duckdb_baseline(site_dir, work)
    etl = map_site(site_dir, db, chunk_mb, extra=extra)
    floor = output_floor(db, work)
    result = EtlRound(
        etl_seconds=etl.seconds,
        etl_cpu=etl.cpu_seconds,
        etl_peak_mib=etl.peak_rss_mib,
        base_seconds=base.seconds,
        base_cpu=base.cpu_seconds,
        base_peak_mib=base.peak_rss_mib,
        records=etl.extra["records"],
        rows=etl.extra["rows"],
        persons=etl.extra["persons"],
        load=(base.load_before, floor.load_after),
        duck_seconds=duck.seconds,
        duck_cpu=duck.cpu_seconds,
        floor_seconds=floor.seconds,
        floor_cpu=floor.cpu_seconds,
        chunks=etl.extra["chunks"],
    )
    print(json.dumps(result.__dict__), flush=True)
    return result


def _chunks_of(stdout: str) -> int:
    found = re.search(r"mapped in (\d+) person-disjoint chunks", stdout)
    return int(found.group(1)) if found else 1


def etl_section(site_dir: Path, rounds: list[EtlRound], command: str) -> str:
    first = rounds[0]
    etl = median([r.etl_seconds for r in rounds])
    base = median([r.base_seconds for r in rounds])
    etl_cpu = median([r.etl_cpu for r in rounds])
    base_cpu = median([r.base_cpu for r in rounds])
    peak = max(r.etl_peak_mib for r in rounds)
    duck = median([r.duck_seconds for r in rounds])
    duck_cpu = median([r.duck_cpu for r in rounds])
    floor = median([r.floor_seconds for r in rounds])
    floor_cpu = median([r.floor_cpu for r in rounds])
    csv_mib = sum(p.stat().st_size for p in mapped_csv_files(site_dir)) / 2**20
    lines = [
        f"{first.persons:,} persons, {first.records:,} source records (CSV rows, {csv_mib:,.0f} MiB), "
        f"{first.rows:,} OMOP rows; one `fedomop map` run ({first.chunks} person-disjoint chunk(s)); "
        f"{len(rounds)} interleaved round(s), median; 1-min load average "
        f"{min(r.load[0] for r in rounds):.1f}-{max(r.load[1] for r in rounds):.1f}.",
        "",
        "| run | wall s | CPU s | records/s (wall) | OMOP rows/s (wall) | peak RSS MiB (process tree) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `fedomop map` (CSV -> OMOP DuckDB) | {etl:,.1f} | {etl_cpu:,.1f} | {first.records / etl:,.0f} | "
        f"{first.rows / etl:,.0f} | {peak:,.0f} |",
        f"| polars `scan_csv().sink_parquet()` (same CSVs) | {base:,.1f} | {base_cpu:,.1f} | "
        f"{first.records / base:,.0f} | - | {max(r.base_peak_mib for r in rounds):,.0f} |",
        f"| DuckDB `read_csv` -> `CREATE TABLE AS`, text (same CSVs) | {duck:,.1f} | {duck_cpu:,.1f} | "
        f"{first.records / duck:,.0f} | - | - |",
        f"| output floor: the mapped OMOP tables + lineage copied into a new DuckDB file | {floor:,.1f} | "
        f"{floor_cpu:,.1f} | - | {first.rows / floor:,.0f} | - |",
        "",
        f"Ratio ETL / bare read+write: **{etl / base:.1f}x** wall, **{etl_cpu / base_cpu:.1f}x** CPU "
        f"(target 2x); peak memory {peak / 1024:.2f} GiB (target < 8 GiB). Against the DuckDB text load: "
        f"{etl / duck:.1f}x wall, {etl_cpu / duck_cpu:.1f}x CPU. Polars read+write plus the output floor: "
        f"{(base + floor) / base:.1f}x wall, {(base_cpu + floor_cpu) / base_cpu:.1f}x CPU of the bare read+write.",
        "",
        f"Machine: {machine()}.",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def cmd_etl(args: argparse.Namespace) -> None:
    site_dir: Path = args.site_dir
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    db: Path = args.db or work / "etl.duckdb"
    extra = ("--no-indexes",) if args.no_indexes else ()
    rounds = [etl_round(site_dir, db, work, args.chunk_mb, extra) for _ in range(args.runs)]
    if not args.db:
        db.unlink(missing_ok=True)
    command = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    section = etl_section(site_dir, rounds, command)
    print(section)
    if args.write_docs:
        append_docs(f"## Scale: ETL against the physical limit ({time.strftime('%Y-%m-%d %H:%M')} UTC)\n\n{section}")


REFERENCE_SCRIPT = REPO / "benchmarks" / "reference_sql_etl.py"


def reference_round(site_dir: Path, work: Path, chunk_mb: int) -> dict[str, TreeRun]:
    """polars copy, the hand-written SQL reference and ``fedomop map`` on the same files, one after another."""
    ref_db, map_db = work / "reference.duckdb", work / "mapped.duckdb"
    runs = {
        "polars": baseline(site_dir, work),
        "reference": checked(
            run_monitored([PYTHON, str(REFERENCE_SCRIPT), "--source", str(site_dir), "--db", str(ref_db)]),
            "reference SQL ETL",
        ),
        "map": map_site(site_dir, map_db, chunk_mb),
    }
    print(
        json.dumps(
            {
                k: [round(r.seconds, 2), round(r.cpu_seconds, 2), round(r.peak_rss_mib), round(r.system_seconds, 2)]
                for k, r in runs.items()
            }
        )
    )
    return runs


def reference_section(site_dir: Path, rounds: list[dict[str, TreeRun]], same: str, command: str) -> str:
    """Medians per run kind and the ratios of each round, side by side."""
    first = rounds[0]["map"].extra
    wall = {k: median([r[k].seconds for r in rounds]) for k in rounds[0]}
    cpu = {k: median([r[k].cpu_seconds for r in rounds]) for k in rounds[0]}
    peak = {k: max(r[k].peak_rss_mib for r in rounds) for k in rounds[0]}
    loads = [x for r in rounds for t in r.values() for x in (t.load_before, t.load_after)]
    ratio_wall = median([r["map"].seconds / r["reference"].seconds for r in rounds])
    ratio_cpu = median([r["map"].cpu_seconds / r["reference"].cpu_seconds for r in rounds])
    names = {
        "polars": "polars `scan_csv().sink_parquet()` (same CSVs, all text)",
        "reference": "hand-written DuckDB SQL ETL (`benchmarks/reference_sql_etl.py`: no lineage, no quarantine)",
        "map": "`fedomop map` (lineage, quarantine, reconciliation, atomic swap)",
    }
    lines = [
        f"{first['persons']:,} persons, {first['records']:,} source records, {first['rows']:,} OMOP rows "
        f"({first['chunks']} chunk(s)); {len(rounds)} round(s), median; 1-min load average "
        f"{min(loads):.1f}-{max(loads):.1f} on 2 CPUs. Reference vs `fedomop map` OMOP rows: {same}.",
        "",
        "| run | wall s | CPU s | peak RSS MiB | wall / polars | CPU / polars |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {names[k]} | {wall[k]:,.1f} | {cpu[k]:,.1f} | {peak[k]:,.0f} | {wall[k] / wall['polars']:.1f}x | "
            f"{cpu[k] / cpu['polars']:.1f}x |"
            for k in names
        ),
        "",
        f"`fedomop map` / reference (median of the per-round ratios): **{ratio_wall:.2f}x wall, {ratio_cpu:.2f}x "
        "CPU** (target <= 1.0x).",
        "",
        "Per round: CPU s as user + system (kernel), and minor page faults (millions), to see where the run-to-run "
        "spread lives:",
        "",
        "| round | " + " | ".join(f"{k} CPU s (user + sys) | {k} faults M" for k in names) + " | map / SQL CPU |",
        "|---:|" + "---|---:|" * len(names) + "---:|",
        *(
            f"| {i} | "
            + " | ".join(
                f"{r[k].cpu_seconds:.1f} ({r[k].cpu_seconds - r[k].system_seconds:.1f} + {r[k].system_seconds:.1f})"
                f" | {r[k].minor_faults / 1e6:.1f}"
                for k in names
            )
            + f" | {r['map'].cpu_seconds / r['reference'].cpu_seconds:.2f}x |"
            for i, r in enumerate(rounds, 1)
        ),
        "",
        f"Machine: {machine()}.",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def cmd_reference(args: argparse.Namespace) -> None:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    rounds = [reference_round(args.site_dir, work, args.chunk_mb) for _ in range(args.runs)]
    check = run_monitored(
        [PYTHON, str(REFERENCE_SCRIPT), "--db", str(work / "reference.duckdb"), "--check", str(work / "mapped.duckdb")]
    )
    print(check.stdout)
    same = "the same" if check.returncode == 0 else "**DIFFERENT** (see the check's output)"
    section = reference_section(
        args.site_dir, rounds, same, "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    )
    print(section)
    if args.write_docs:
        append_docs(f"## Scale: fedomop map vs hand-written SQL ({time.strftime('%Y-%m-%d %H:%M')} UTC)\n\n{section}")
    for db in ("reference.duckdb", "mapped.duckdb"):
        (work / db).unlink(missing_ok=True)


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
    from fedomop.harmonize.mapping.loader import load_mapping

    return load_mapping(FHIR_MAPPING)


def fhir_sources(site_dir: Path) -> list[tuple[str, object, list[Path]]]:
    """(name, source, files) of every NDJSON source of the site-B mapping."""
    from fedomop.harmonize.run.files import resolve_files

    mapping = _site_b_mapping()
    files = resolve_files(mapping, site_dir)
    return [(name, s, files.of(name)) for name, s in mapping.sources.items() if s.format == "fhir_ndjson"]


def read_site_fhir(site_dir: Path, workers: int = 1) -> int:
    """Read every mapped NDJSON source as the engine does (structural check + the mapping's columns)."""
    from fedomop.harmonize.sources.fhir.reader import read_fhir

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

    from fedomop.harmonize.sources.fhir.structure import StructuralValidator

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


def fhir_map_run(site_dir: Path, db: Path, chunk_mb: int, code: Path | None) -> TreeRun:
    """One chunked ``fedomop map`` of a FHIR site, from this checkout or from ``code``."""
    run = map_site(site_dir, db, chunk_mb, REPO / "mappings" / "site_b.yaml", code)
    db.unlink(missing_ok=True)
    return run


def cmd_fhir_map(args: argparse.Namespace) -> None:
    contenders: list[tuple[str, Path | None]] = [("this checkout", None)]
    if args.code:
        code = args.code.resolve()
        if not (code / "harmonize" / "cli.py").is_file():
            raise SystemExit(f"--code {args.code}: not a fedomop checkout (no harmonize/cli.py there); give its root")
        contenders.insert(0, (f"{args.code}", code))
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[TreeRun]] = {label: [] for label, _ in contenders}
    for _ in range(args.runs):
        for label, code in contenders:
            run = fhir_map_run(args.site_dir, args.work / "fhir_map.duckdb", args.chunk_mb, code)
            results[label].append(run)
            print(json.dumps({"code": label, "s": run.seconds, "cpu": run.cpu_seconds, "peak_mib": run.peak_rss_mib,
                              **run.extra}), flush=True)  # fmt: skip
    lines = [
        f"Site-B-style FHIR NDJSON site `{args.site_dir}` mapped by `fedomop map --chunk-mb {args.chunk_mb}` "
        f"(median of {args.runs}; peak RSS of the process tree, the largest run).",
        "",
        "| code | chunks | source records | OMOP rows | wall s | CPU s | peak RSS MiB | load before / after |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, runs in results.items():
        first = runs[0]
        lines.append(
            f"| {label} | {first.extra['chunks']} | {first.extra['records']:,} | {first.extra['rows']:,} | "
            f"{median([r.seconds for r in runs]):.1f} | {median([r.cpu_seconds for r in runs]):.1f} | "
            f"{max(r.peak_rss_mib for r in runs):,.0f} | {runs[0].load_before:.1f} / {runs[-1].load_after:.1f} |"
        )
    lines += [
        "",
        f"Machine: {machine()}.",
        f"Command: `.venv/bin/python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}`",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write_docs:
        append_docs(f"## Scale: FHIR site mapped in chunks ({time.strftime('%Y-%m-%d %H:%M')} UTC)\n\n{section}")


def check_timings(db: Path, top: int = 8) -> list[tuple[str, float]]:
    """Seconds per check type: the DQD catalogue run one check type at a time, in-process, slowest first."""
    from fedomop.harmonize.ground.db import connect
    from fedomop.harmonize.validate.checks.runner import registered_checks, run_checks

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
    etl.add_argument(
        "--chunk-mb", type=int, default=DEFAULT_CHUNK_MB, help="fedomop map --chunk-mb (MiB of CSV per chunk)"
    )
    etl.add_argument("--runs", type=int, default=1, help="interleaved rounds; medians reported")
    etl.add_argument("--db", type=Path, help="keep the mapped database here (default: deleted)")
    etl.add_argument("--work", type=Path, default=Path("/tmp/fedomop_scale/work"))
    etl.add_argument("--write-docs", action="store_true")
    etl.add_argument(
        "--no-indexes", action="store_true", help="map without the official CDM indexes (issue 14 makes them default)"
    )
    etl.set_defaults(handler=cmd_etl)
    ref = sub.add_parser("reference", help="fedomop map vs the hand-written SQL ETL vs polars, side by side")
    ref.add_argument("--site-dir", type=Path, required=True, help="a site-A-style CSV folder")
    ref.add_argument("--chunk-mb", type=int, default=DEFAULT_CHUNK_MB)
    ref.add_argument("--runs", type=int, default=1)
    ref.add_argument("--work", type=Path, default=Path("/tmp/fedomop_scale/work"))
    ref.add_argument("--write-docs", action="store_true")
    ref.set_defaults(handler=cmd_reference)
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
    fmap = sub.add_parser("fhir-map", help="fedomop map of a big site-B-style FHIR site: time and peak memory")
    fmap.add_argument("--site-dir", type=Path, required=True)
    fmap.add_argument("--chunk-mb", type=int, default=DEFAULT_CHUNK_MB)
    fmap.add_argument("--runs", type=int, default=1)
    fmap.add_argument("--code", type=Path, help="also run from this checkout (e.g. a git worktree of an older commit)")
    fmap.add_argument("--work", type=Path, default=Path("/tmp/fedomop_scale/work"))
    fmap.add_argument("--write-docs", action="store_true")
    fmap.set_defaults(handler=cmd_fhir_map)
    args = parser.parse_args()
    print(f"load average before: {load_average():.1f}", flush=True)
    args.handler(args)


if __name__ == "__main__":
    main()
