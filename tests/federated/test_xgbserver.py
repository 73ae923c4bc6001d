"""XGBoost's federated server runs in its own network namespace: nothing of fedomop listens on every interface."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedomop.federated import runner, xgbserver
from fedomop.federated.survival import boosted

WILDCARDS = {"0.0.0.0", "::"}


def _site(seed: int, n: int) -> boosted.Part:
    """A small censored site: ln T depends on the first two covariates; site-specific censoring."""
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=0.3 * seed, size=(n, 3))
    log_t = 5.0 + 0.8 * X[:, 0] - 0.5 * X[:, 1] + 0.3 * rng.normal(size=n)
    censor = rng.exponential(scale=np.exp(5.5 - 0.2 * seed), size=n)
    return boosted.Part(X, np.minimum(np.exp(log_t), censor).round() + 1, np.exp(log_t) <= censor)


def _tree() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _listening() -> set[tuple[str, int]]:
    """TCP/UDP listeners of this process and its children on this machine's interfaces (this network namespace)."""
    found: set[tuple[str, int]] = set()
    for process in _tree():
        with contextlib.suppress(psutil.Error):
            for conn in process.net_connections(kind="inet"):
                if conn.status in (psutil.CONN_LISTEN, psutil.CONN_NONE) and conn.laddr:
                    found.add((conn.laddr.ip, conn.laddr.port))
    return found


@contextlib.contextmanager
def _sampling(probe: Callable[[], set[tuple[str, int]]] | None = None) -> Iterator[set[tuple[str, int]]]:
    """Every listener ``probe`` (default: this tree's listeners) finds while the block runs, every 20 ms."""
    seen: set[tuple[str, int]] = set()
    done = threading.Event()
    look = probe or _listening

    def sample() -> None:
        while not done.is_set():
            seen.update(look())
            done.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def test_histogram_training_binds_nothing_to_every_interface_and_equals_pooled() -> None:
    parts = [_site(s, 160 + 40 * s) for s in range(3)]
    edges = boosted.agreed_edges(parts, small_cell=5)
    before = {p.pid for p in _tree()}
    with _sampling() as seen:
        federated = boosted.train_federated(parts, edges, rounds=8)

    assert not {ip for ip, _ in seen} & WILDCARDS, seen
    assert any(ip == "127.0.0.1" for ip, _ in seen), "the sampler never saw the relay: it sampled nothing"
    assert {p.pid for p in _tree()} <= before  # the namespaced server is gone
    pooled = boosted.train_plain(parts, 8, edges=edges)
    unseen = _site(9, 200).X
    federated_margin, pooled_margin = boosted.margin(federated, unseen, edges), boosted.margin(pooled, unseen, edges)
    assert np.std(pooled_margin) > 0.1
    np.testing.assert_allclose(federated_margin, pooled_margin, atol=1e-5)


def test_server_folder_and_child_are_removed_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError), xgbserver.federated_server(2) as server:
        port = server.port
        children = [p for p in psutil.Process().children(recursive=True) if "xgbserver" in " ".join(p.cmdline())]
        folders = [Path(arg).parent for p in children for arg in p.cmdline() if arg.endswith("server.sock")]
        assert port > 0 and children and folders and all(f.is_dir() for f in folders)
        raise RuntimeError("a site failed")
    assert not any(f.exists() for f in folders)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children)


def test_without_user_namespaces_training_stops_naming_reason_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(xgbserver.NO_USERNS_ENV, "1")
    parts = [_site(s, 50) for s in range(2)]
    with pytest.raises(xgbserver.IsolationError) as caught:
        boosted.train_federated(parts, boosted.agreed_edges(parts, small_cell=5), rounds=2)
    said = str(caught.value)
    assert "every interface" in said and xgbserver.NO_USERNS_ENV in said
    assert "fix: enable unprivileged user namespaces" in said and "xgboost-bagging" in said
    assert runner.demo_model() == "xgboost-bagging"


def test_demo_keeps_histogram_xgboost_where_namespaces_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(xgbserver.NO_USERNS_ENV, raising=False)
    assert xgbserver.namespace_problem() is None
    assert runner.demo_model() == "xgboost-hist"


def _wildcard_listeners_of_this_tree() -> set[tuple[str, int]]:
    """Listeners on every interface *of this machine's network* (the host namespace) owned by this process tree;
    sockets inside a private namespace are not in this view, which is the point."""
    mine = {p.pid for p in _tree()}
    found: set[tuple[str, int]] = set()
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="inet"):
            if conn.pid in mine and conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.ip in WILDCARDS:
                found.add((conn.laddr.ip, conn.laddr.port))
    return found


def _simulate_sampling(sample_sites: dict[str, Path], out: Path) -> set[tuple[str, int]]:
    with _sampling(_wildcard_listeners_of_this_tree) as seen:
        result = runner.simulate(
            STUDY, list(sample_sites.values())[:2], out=out, model="xgboost-bagging", rounds=1, pooled=False
        )
    assert result["federated"], result
    return seen


STUDY = Path(__file__).parents[2] / "federated" / "studies" / "bone_metastasis.yaml"


@pytest.mark.slow
def test_a_simulation_runs_in_its_own_network_namespace_and_listens_on_no_interface(
    sample_sites: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray (under Flower's simulation) listens on every interface; in the simulation's own namespace nothing of
    it is reachable. The control run without namespaces shows the sampler does see Ray's wildcard listeners."""
    if xgbserver.namespace_problem():
        pytest.skip(f"no user namespaces here: {xgbserver.namespace_problem()}")
    isolated = _simulate_sampling(sample_sites, tmp_path / "isolated")
    assert isolated == set(), isolated
    monkeypatch.setenv(xgbserver.NO_USERNS_ENV, "1")  # the old way: in this process
    exposed = _simulate_sampling(sample_sites, tmp_path / "exposed")
    assert exposed, "the control run showed no wildcard listener: the sampler sees nothing"
