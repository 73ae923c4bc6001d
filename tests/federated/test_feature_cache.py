"""The executor's per-run feature cache: one build per run and site, one data snapshot per run, nothing left behind."""

from __future__ import annotations

import os
import shutil
import signal
import stat
from pathlib import Path

import duckdb
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedomop.federated import client_app, feature_cache, features
from fedomop.federated.executor import _feature_cache, remove_orphaned_caches
from fedomop.federated.features import SiteData
from fedomop.federated.study import STUDIES_DIR

STUDY_TEXT = (STUDIES_DIR / "bone_metastasis.yaml").read_text(encoding="utf-8")


def _matrix() -> SiteData:
    return SiteData(
        X=np.array([[1.0, np.nan], [3.5, -2.0], [0.0, 7.25]]),
        y=np.array([0.0, 1.0, 0.0]),
        person_id=np.array([11, 12, 13], dtype=np.int64),
        feature_names=["age", "alp"],
        time=np.array([30.0, 12.0, 400.0]),
        status=np.array([0, 1, 2], dtype=np.int64),
    )


def test_a_stored_matrix_comes_back_identical_with_its_digest(tmp_path):
    data = _matrix()
    feature_cache.store(tmp_path, "k", data)
    back = feature_cache.load(tmp_path, "k")
    assert back is not None and back.digest() == data.digest()
    assert back.feature_names == ["age", "alp"] and np.array_equal(back.X, data.X, equal_nan=True)
    assert back.status is not None and back.status.tolist() == [0, 1, 2]
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no leftovers


def test_a_binary_outcome_has_no_time_or_status(tmp_path):
    data = SiteData(X=np.ones((2, 1)), y=np.array([0.0, 1.0]), person_id=np.array([1, 2]), feature_names=["x"])
    feature_cache.store(tmp_path, "k", data)
    back = feature_cache.load(tmp_path, "k")
    assert back is not None and back.time is None and back.status is None


def test_an_altered_or_torn_file_is_never_used(tmp_path):
    feature_cache.store(tmp_path, "k", _matrix())
    path = tmp_path / f"k{feature_cache.SUFFIX}"
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["y"] = np.array([1.0, 1.0, 1.0])  # a label changed behind the digest's back
    np.savez(path, **arrays)
    assert feature_cache.load(tmp_path, "k") is None
    path.write_bytes(path.read_bytes()[:100])  # torn
    assert feature_cache.load(tmp_path, "k") is None
    assert feature_cache.load(tmp_path, "missing") is None


def test_prune_drops_matrices_unused_for_the_idle_time(tmp_path):
    feature_cache.store(tmp_path, "old", _matrix())
    feature_cache.store(tmp_path, "new", _matrix())
    old = tmp_path / f"old{feature_cache.SUFFIX}"
    os.utime(old, (old.stat().st_atime - 7200, old.stat().st_mtime - 7200))
    assert feature_cache.prune(tmp_path, idle_s=3600) == 1
    assert [p.name for p in tmp_path.iterdir()] == [f"new{feature_cache.SUFFIX}"]


def test_the_executors_folder_is_private_and_removed_on_sigterm(monkeypatch):
    monkeypatch.delenv(feature_cache.CACHE_ENV, raising=False)
    with pytest.raises(SystemExit) as ended, _feature_cache() as folder:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert os.environ[feature_cache.CACHE_ENV] == str(folder)
        feature_cache.store(folder, "k", _matrix())
        os.kill(os.getpid(), signal.SIGTERM)  # what `fedomop site start` sends its executor on the way out
    assert ended.value.code == 128 + signal.SIGTERM
    assert not folder.exists()


def test_a_killed_executors_folder_is_removed_at_the_next_start_and_a_live_ones_kept(monkeypatch):
    """Ownership is the lock a running executor holds on its folder's owner file, not a pid: a pid names nothing
    across containers that share the folder (an executor in its own PID namespace must not delete the others')."""
    import fcntl
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="fo-", dir="/tmp"))  # short: the executor refuses a long TMPDIR

    orphan = tmp_path / "fedomop-features-4242-abc"  # its executor was SIGKILLed: the lock went with it
    live = tmp_path / "fedomop-features-1-def"  # a running executor's, whatever its pid means here
    unfinished = tmp_path / "fedomop-features-7-ghi"  # no owner file: never finished by an executor
    for folder in (orphan, live, unfinished):
        folder.mkdir()
        feature_cache.store(folder, "k", _matrix())
    (orphan / ".owner").touch()
    with open(live / ".owner", "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the running executor holds it
        assert sorted(remove_orphaned_caches(tmp_path)) == [orphan, unfinished]
        assert live.exists() and not orphan.exists() and not unfinished.exists()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        monkeypatch.delenv("TMPDIR", raising=False)
        monkeypatch.delenv(feature_cache.CACHE_ENV, raising=False)
        with _feature_cache() as folder:  # the executor's start does the same clean-up, and holds its own lock
            assert folder.parent == tmp_path and folder.name.startswith(f"fedomop-features-{os.getpid()}-")
            assert remove_orphaned_caches(tmp_path) == []  # both owned now
            assert not list(tmp_path.glob(".fedomop-staging-*"))
        assert not folder.exists() and live.exists()
    shutil.rmtree(tmp_path)


def test_an_unusable_tmpdir_is_refused_not_replaced_by_the_system_temp_folder(tmp_path, monkeypatch):
    from fedomop.federated.commands.network import preflight_site
    from fedomop.federated.executor import cache_root
    from fedomop.harmonize.ground.errors import FedomopError

    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    with pytest.raises(FedomopError, match=r"TMPDIR=.*missing is not a folder this user can write") as refused:
        cache_root()
    assert refused.value.where == "environment variable TMPDIR"
    with pytest.raises(FedomopError, match="TMPDIR"):
        preflight_site("site_a", None, None, None)  # `fedomop site start` stops before starting anything
    monkeypatch.setenv("TMPDIR", "/tmp")
    assert cache_root() == Path("/tmp")
    long = tmp_path / ("x" * 70)  # a Unix socket inside it would pass the 107-byte limit
    long.mkdir()
    monkeypatch.setenv("TMPDIR", str(long))
    with pytest.raises(FedomopError, match=r"bytes long: the executor's Unix socket inside it would pass"):
        cache_root()


def test_the_hubs_xgboost_socket_folder_leaves_a_long_tmpdir_for_tmp(monkeypatch):
    import tempfile

    from fedomop.federated.xgbserver import _socket_base

    monkeypatch.setattr(tempfile, "tempdir", "/tmp/" + "y" * 80)
    assert _socket_base() == "/tmp"
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    assert _socket_base() is None


def test_a_matrix_that_cannot_be_kept_says_so_and_the_message_goes_on(tmp_path, capsys):
    feature_cache.store(tmp_path / "removed", "k", _matrix())  # the folder is gone
    said = capsys.readouterr().err
    assert "could not be kept" in said and "read the database again" in said


@pytest.fixture
def identity():
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _describe(db: Path, run_id: int) -> str:
    """One describe message through the ClientApp's handler, as a task process of the executor runs it."""
    config = ConfigRecord({"study": STUDY_TEXT, "model": "xgboost-hist"})
    message = Message(RecordDict({"config": config}), dst_node_id=1, message_type="query.describe")
    node = {"db": str(db), "site": "site_a", "policy": client_app.NO_POLICY}
    context = Context(run_id=run_id, node_id=1, node_config=node, state=RecordDict(), run_config={})
    reply = client_app._handle(client_app._describe, None, message, context)
    assert not reply.has_error(), reply.error
    return str(reply.content["site"]["data-version"])


def test_one_run_sees_one_snapshot_and_a_new_run_reads_the_database_again(
    identity, synthetic_sites, tmp_path, monkeypatch
):
    db = tmp_path / "site_a.duckdb"
    shutil.copy(synthetic_sites["site_a"], db)
    monkeypatch.setenv(feature_cache.CACHE_ENV, str(tmp_path))
    builds: list[str] = []
    real_build = features.build_features
    monkeypatch.setattr(features, "build_features", lambda *a: builds.append("built") or real_build(*a))

    first = _describe(db, run_id=5)
    with duckdb.connect(str(db)) as con:  # the steward re-maps in the middle of run 5: a third of the persons go
        con.execute("DELETE FROM person WHERE person_id % 3 = 0")
    assert _describe(db, run_id=5) == first and len(builds) == 1  # the same run: the matrix it started with
    assert _describe(db, run_id=6) != first and len(builds) == 2  # the next run: today's data
    assert len(list(tmp_path.glob(f"*{feature_cache.SUFFIX}"))) == 2


def test_the_fork_servers_preload_runs_no_python_thread_and_includes_xgboost():
    """What the executor's fork server imports must leave it a single Python thread (a fork copies no thread),
    and must spare each XGBoost message the import of xgboost."""
    import subprocess
    import sys

    from fedomop.federated.executor import PRELOAD

    code = (
        "import importlib, sys, threading\n"
        f"for name in {PRELOAD!r}:\n    importlib.import_module(name)\n"
        "print(threading.active_count(), 'xgboost' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == ["1", "True"]
