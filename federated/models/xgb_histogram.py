"""Federated histogram XGBoost with XGBoost's own federated communicator and global bin edges.

Method: horizontal federated gradient boosting in which the sites jointly build
each tree: for every node the sites' gradient/hessian histograms are summed by an
allreduce through the federated server (``xgboost.federated``), so each split is
chosen on the pooled histograms (the approach of SecureBoost's horizontal
counterpart and of NVIDIA FLARE's histogram-based XGBoost; see Chen & Guestrin,
"XGBoost", KDD 2016, for the histogram ``hist`` method itself).

The result equals pooled training only if every site bins a feature the same way.
So the bin edges are agreed first, federatedly and without rows leaving a site:

1. each site sends a quantile sketch of every feature: interpolated quantiles at
   256 mid-point levels and the count (``query.sketch``; a feature seen in fewer
   than ``small_cell`` persons is withheld) -- the same kind of summary XGBoost's
   distributed sketching exchanges, never a row;
2. the hub merges the sketches into the pooled distribution and cuts it at 256
   equal-mass levels: the global bin edges;
3. every site replaces each value by its global edge (``discretise``), so all
   sites' XGBoost sketches find exactly those cut points, and training runs under
   the communicator with ``dmlc_communicator="federated"``.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedomop.federated import xgbserver
from fedomop.federated.models import xgb_common
from fedomop.federated.models.base import ModelDefaults, Trained, set_phase
from fedomop.federated.settings import TrainSettings
from fedomop.harmonize.ground.errors import FedomopError

NAME = "xgboost-hist"
SKETCH_LEVELS = 256
MAX_BINS = 256
log = logging.getLogger(__name__)


# -- site side -------------------------------------------------------------------------------------
def quantile_levels(k: int = SKETCH_LEVELS) -> np.ndarray:
    """Mid-point levels (never 0 or 1, so no single person's minimum or maximum is sent)."""
    return (np.arange(k) + 0.5) / k


def site_sketch(X: np.ndarray, small_cell: int, k: int = SKETCH_LEVELS) -> ArrayRecord:
    """Per-feature quantiles at :func:`quantile_levels` and the non-missing count.

    Only the boundaries between bins of at least ``small_cell`` persons are released
    (:func:`fedomop.federated.governance.disclosure.coarse_quantiles`); a feature with fewer
    than two such bins is sent as count 0 and NaN quantiles.
    """
    from fedomop.federated.governance.disclosure import coarse_quantiles

    quantiles = np.full((X.shape[1], k), np.nan)
    counts = np.zeros(X.shape[1], dtype=np.int64)
    for j in range(X.shape[1]):
        present = X[:, j][~np.isnan(X[:, j])]
        released = coarse_quantiles(present, quantile_levels(k), small_cell)
        if released is not None:
            quantiles[j] = released
            counts[j] = present.size
    return ArrayRecord({"quantiles": Array(quantiles), "counts": Array(counts)})


def site_train(
    X: np.ndarray,
    y: np.ndarray,
    edges: list[np.ndarray],
    *,
    server_address: str,
    world_size: int,
    rank: int,
    rounds: int,
    timeout: int = 300,
    tls: dict[str, str] | None = None,
    min_leaf: int = 0,
) -> ArrayRecord:
    """Join the federated allreduce and train on globally-binned features; every rank ends with the same model.

    ``tls``: :func:`fedomop.federated.governance.certs.xgboost_client_tls` (mutual TLS with the hub's server).
    ``min_leaf``: the fewest *pooled* persons per leaf (``min_child_weight`` on the summed hessians); every rank
    must pass the same value (the study's ``small_cell``), or the ranks would choose different splits.
    """
    xgb = xgb_common.xgboost()
    features = xgb_common.discretise(X, edges)
    with xgb.collective.CommunicatorContext(
        dmlc_communicator="federated",
        federated_server_address=server_address,
        federated_world_size=world_size,
        federated_rank=rank,
        dmlc_timeout=timeout,
        **(tls or {}),
    ):
        dtrain = xgb.DMatrix(features, label=y, missing=np.nan)
        booster = xgb.train(xgb_common.params(xgb_common.leaf_params(min_leaf)), dtrain, num_boost_round=rounds)
    return xgb_common.to_record(xgb_common.booster_bytes(booster), edges)


# -- hub side --------------------------------------------------------------------------------------
def global_edges(sketches: list[ArrayRecord], max_bins: int = MAX_BINS) -> list[np.ndarray]:
    """Merge site sketches into the pooled distribution (count-weighted mixture of each site's
    piecewise-linear CDF) and cut it at ``max_bins`` equal-mass levels."""
    quantiles = [s["quantiles"].numpy() for s in sketches]
    counts = [s["counts"].numpy() for s in sketches]
    levels = quantile_levels(quantiles[0].shape[1])
    edges: list[np.ndarray] = []
    for j in range(quantiles[0].shape[0]):
        parts = [(q[j], n[j]) for q, n in zip(quantiles, counts, strict=True) if n[j] > 0]
        if not parts:
            edges.append(np.array([0.0]))
            continue
        points = np.unique(np.concatenate([q for q, _ in parts]))
        total = sum(n for _, n in parts)
        cdf = sum(n * np.interp(points, q, levels, left=0.0, right=1.0) for q, n in parts) / total
        targets = np.arange(1, max_bins + 1) / max_bins
        chosen = np.minimum(np.searchsorted(cdf, targets - 1e-12, side="left"), len(points) - 1)
        edges.append(np.unique(points[chosen]))
    return edges


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def collect(grid: Grid, messages: list[Message], what: str) -> list[Message]:
    """Send, wait, and return the replies in the order of ``messages``; every site must answer.

    The allreduce needs every rank, so a site that failed or did not answer within the
    grid's round timeout (:class:`fedomop.federated.faults.FaultTolerantGrid`) stops the run, named.
    """
    from fedomop.federated.faults import PEER_LOST

    replies = list(grid.send_and_receive(messages))
    by_node = {r.metadata.src_node_id: r for r in replies if not r.has_error()}
    failed = {r.metadata.src_node_id: str(r.error.reason) for r in replies if r.has_error()}
    missing = [m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id not in by_node]
    if missing:
        name = getattr(grid, "site", lambda node: f"node {node}")
        silent = [n for n in missing if n not in failed]
        # survivors of a silent site fail with PEER_LOST: name the silent site, not them
        culprits = silent or [n for n in missing if PEER_LOST not in failed.get(n, "")] or missing
        own = [why for n, why in failed.items() if n in culprits]
        reasons = "; ".join(own) or "no reply within the round timeout"
        collateral = len(missing) - len(culprits)
        others = f"; {collateral} other site(s) stopped with it" if collateral else ""
        raise FedomopError(
            f"{what}: every site is needed and {', '.join(name(n) for n in culprits)} did not answer "
            f"({reasons}){others}",
            where=NAME,
            fix="restart the missing site and run again, or train with xgboost-bagging/xgboost-cyclic/mlp, "
            "which continue with min_sites",
        )
    return [by_node[m.metadata.dst_node_id] for m in messages]


def agree_edges(grid: Grid, nodes: list[int], config: dict[str, Any]) -> list[np.ndarray]:
    """Step 1: every site's quantile sketch, merged at the hub into global edges."""
    messages = [
        Message(content=RecordDict({"config": ConfigRecord(config)}), dst_node_id=n, message_type="query.sketch")
        for n in nodes
    ]
    replies = collect(grid, messages, "quantile sketch")
    return global_edges([r.content.array_records["sketch"] for r in replies])


def require_federated_xgboost() -> None:
    """Histogram training needs XGBoost's federated plugin; some wheels on the index are built without it.

    Checked before any site is asked to train, so the user reads what to install, not a native stack trace."""
    import xgboost

    if not xgboost.build_info().get("USE_FEDERATED", False):
        raise FedomopError(
            f"xgboost {xgboost.__version__} is built without federated learning support",
            where=NAME,
            fix="install an xgboost build with the federated plugin: pip install 'xgboost>=2.1,<3.3'",
        )


def server_run(
    grid: Grid,
    nodes: list[int],
    rounds: int,
    config: dict[str, Any],
    *,
    host: str = "127.0.0.1",
    certs: str | None = None,
) -> ArrayRecord:
    """Agree edges, start the federated allreduce server, and train all sites at once.

    XGBoost 3.2's federated tracker hard-codes ``0.0.0.0:<port>`` (its API has no host), so it runs in its own
    network namespace behind a relay on ``host`` (:mod:`fedomop.federated.xgbserver`): the sites dial
    ``host:<port>`` and nothing listens on every interface. The port is a fresh free one, open for this training
    only, and admits ``len(nodes)`` ranks. With ``certs`` (``fedomop certs create``) the server requires mutual
    TLS (the relays pass the bytes through): sites present their ``<site>.tls.pem`` (node config ``certs``).
    Without user namespaces this stops, before any site is asked, with an :class:`xgbserver.IsolationError`.
    """
    from fedomop.federated.governance.certs import xgboost_server_tls

    require_federated_xgboost()
    xgbserver.require_namespaces()
    tls = xgboost_server_tls(certs) if certs else {}
    with xgbserver.federated_server(len(nodes), host=host, tls=tls) as server:
        edges = agree_edges(grid, nodes, config)  # while the server starts
        return _train_all(grid, nodes, rounds, config, f"{host}:{server.port}", tls=bool(certs), edges=edges)


def _train_all(
    grid: Grid,
    nodes: list[int],
    rounds: int,
    config: dict[str, Any],
    address: str,
    *,
    tls: bool,
    edges: list[np.ndarray],
) -> ArrayRecord:
    """Every site trains against the server at ``address``; all must end with the same booster."""
    # each site's collective gives up within the round timeout, so a killed site frees the others in time
    round_timeout = float(getattr(grid, "round_timeout", 600.0))
    config = {**config, "xgb-tls": tls, "xgb-timeout": max(5, int(round_timeout / 2))}
    edge_record = xgb_common.to_record(b"", edges)
    messages = []
    for rank, node in enumerate(nodes):
        node_config = ConfigRecord(
            {**config, "server-address": address, "world-size": len(nodes), "rank": rank, "rounds": rounds}
        )
        content = RecordDict({"config": node_config, "edges": edge_record})
        messages.append(Message(content=content, dst_node_id=node, message_type="train.histogram"))
    replies = collect(grid, messages, "histogram training")
    models = {r.content.array_records["model"]["0"].numpy().tobytes() for r in replies}
    if len(models) != 1:
        raise FedomopError(
            "sites ended histogram training with different models", where=NAME, fix="check all sites run the same code"
        )
    return replies[0].content.array_records["model"]


class HistogramXGBoost(xgb_common.XGBoostModel):
    """Histogram XGBoost over XGBoost's federated allreduce; needs every site at once."""

    name = NAME
    defaults = ModelDefaults(rounds=60, local_rounds=5)
    needs_every_site = True

    def server_run(
        self, grid: Any, nodes: list[int], settings: TrainSettings, config: dict[str, Any], min_sites: int
    ) -> Trained:
        set_phase(grid, "histogram")
        # the hub operator's address and TLS folder (server_app.RunSettings, from HubConfig), never the run config's
        host, certs = str(getattr(settings, "xgb_host", "127.0.0.1")), str(getattr(settings, "certs", "")) or None
        model = server_run(grid, nodes, settings.rounds, config, host=host, certs=certs)
        return Trained(model, {}, 2)

    def site_train(self, record: ArrayRecord, X: np.ndarray, y: np.ndarray, config: dict[str, Any]) -> ArrayRecord:
        """``record`` holds the global edges; ``config["tls"]`` the site's client certificate, if the hub asks."""
        return site_train(
            X,
            y,
            xgb_common.from_record(record)[1] or [],
            server_address=str(config["server-address"]),
            world_size=int(config["world-size"]),
            rank=int(config["rank"]),
            rounds=int(config["rounds"]),
            tls=config.get("tls"),
            timeout=int(config.get("xgb-timeout", 300)),
            min_leaf=int(config.get(xgb_common.MIN_LEAF_KEY, 0)),
        )

    def local_total(self, settings: TrainSettings) -> int:
        return settings.rounds
