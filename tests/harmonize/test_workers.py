"""Chunks built by worker processes give the database a sequential run gives, row by row, ids included."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psutil
import pytest

from fedomop.harmonize.ground.errors import FedomopError
from fedomop.harmonize.run import run_mapping
from fedomop.harmonize.run.chunking import StagedSite
from tests.conftest import MAPPINGS, SAMPLE_DATA

RUN_COLUMNS = {"run_id", "started_at", "finished_at", "loaded_at", "load_id", "load_seconds"}  # when, not what


def _tables(con: duckdb.DuckDBPyConnection, db: str) -> list[str]:
    rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY 1", [db]).fetchall()
    return [r[0] for r in rows]


def _rows(con: duckdb.DuckDBPyConnection, db: str, table: str) -> list[tuple[object, ...]]:
    columns = [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = ? ORDER BY column_index",
            [db, table],
        ).fetchall()
        if r[0] not in RUN_COLUMNS
    ]
    listed = ", ".join(f'"{c}"' for c in columns)
    return con.execute(f"SELECT {listed} FROM {db}.{table} ORDER BY ALL").fetchall()


def _same_database(one: Path, two: Path) -> None:
    con = duckdb.connect()
    con.execute(f"ATTACH '{one}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{two}' AS b (READ_ONLY)")
    tables = _tables(con, "a")
    assert tables == _tables(con, "b")
    assert {"person", "fedomop_lineage_row", "fedomop_quarantine", "fedomop_reconciliation"} <= set(tables)
    for table in [*tables, "fedomop_lineage"]:  # and the lineage view
        assert _rows(con, "a", table) == _rows(con, "b", table), table
    con.close()


@pytest.mark.parametrize("site", ["site_a", "site_b"])  # CSV, FHIR NDJSON
def test_two_workers_give_the_database_one_worker_gives(site: str, tmp_path: Path) -> None:
    one = run_mapping(MAPPINGS / f"{site}.yaml", SAMPLE_DATA / site, tmp_path / "one.duckdb", chunks=3, workers=1)
    two = run_mapping(MAPPINGS / f"{site}.yaml", SAMPLE_DATA / site, tmp_path / "two.duckdb", chunks=3, workers=2)
    assert (one.chunks, two.chunks) == (3, 3)
    assert two.balanced and two.loaded == one.loaded and two.quarantine_reasons == one.quarantine_reasons
    _same_database(tmp_path / "one.duckdb", tmp_path / "two.duckdb")


def test_a_chunk_failing_in_a_worker_fails_the_run_as_in_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A staged chunk file that cannot be read (here: truncated) fails the run with the same error either way,
    and no database is left behind."""
    original = StagedSite.stage

    def stage_then_break_a_chunk(self: StagedSite, name: str) -> None:
        original(self, name)
        if name == "observations":
            for part in (self.scratch / name / "0" / "_chunk=2").rglob("*"):
                if part.is_file():
                    part.write_bytes(b"not parquet")

    monkeypatch.setattr(StagedSite, "stage", stage_then_break_a_chunk)
    errors = []
    for workers in (1, 2):
        target = tmp_path / f"site{workers}.duckdb"
        with pytest.raises(Exception) as raised:  # noqa: PT011 - the point is that both runs raise the same
            run_mapping(MAPPINGS / "site_a.yaml", SAMPLE_DATA / "site_a", target, chunks=3, workers=workers)
        errors.append((type(raised.value), str(raised.value).replace(str(target), "")))
        assert not target.exists()
    assert errors[0] == errors[1]
    assert all(not issubclass(kind, FedomopError) or text for kind, text in errors)


def _cli(db: Path, scratch: Path) -> subprocess.Popen[str]:
    command = [str(Path(sys.executable).with_name("fedomop")), "map", "--mapping", str(MAPPINGS / "site_b.yaml")]
    command += ["--source", str(SAMPLE_DATA / "site_b"), "--db", str(db), "--chunks", "6", "--workers", "2"]
    return subprocess.Popen(
        [*command, "--scratch", str(scratch)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_workers(run: subprocess.Popen[str]) -> list[psutil.Process]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = [p for p in psutil.Process(run.pid).children(recursive=True) if "spawn" in " ".join(p.cmdline())]
        if len(workers) >= 2:
            return workers
        assert run.poll() is None, run.communicate()
        time.sleep(0.05)
    raise AssertionError("no worker processes started")


@pytest.mark.parametrize("how", ["ctrl-c", "worker killed"])
def test_an_interrupted_or_crashed_run_leaves_no_temporary_files(how: str, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    db = tmp_path / "site.duckdb"
    run = _cli(db, scratch)
    workers = _wait_for_workers(run)
    if how == "ctrl-c":
        run.send_signal(signal.SIGINT)
    else:
        workers[0].kill()
    _, err = run.communicate(timeout=60)
    assert run.returncode == (130 if how == "ctrl-c" else 1), err
    assert "Traceback" not in err
    assert list(scratch.iterdir()) == []
    assert not db.exists()
    assert not [p for p in tmp_path.iterdir() if p.name not in {"scratch", "site.duckdb.vocabulary"}]
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
