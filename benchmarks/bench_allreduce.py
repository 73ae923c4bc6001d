"""Histogram XGBoost's allreduce traffic, measured on the wire instead of estimated.

Histogram XGBoost (``federated/models/xgb_histogram.py``) sends its gradient histograms through
XGBoost's own federated server (gRPC), outside Flower, so Flower's CountingGrid cannot see them.
This script runs that exchange exactly as a federated run does -- the same features, 70/30 split,
global bin edges from the sites' quantile sketches, parameters and number of trees -- with one
process per site, and puts a byte-counting TCP relay on 127.0.0.1 between the sites and the
federated server. It reports the bytes each site sent and received, per tree and in all, next to
the tree-shape estimate ``bench_federated.py`` used before (trees x 15 nodes x features x 256 bins
x 16 bytes), and checks that every site ended with the same model.

Usage: .venv/bin/python benchmarks/bench_allreduce.py [--sites out/site_a.duckdb ...] [--trees 60] [--write-docs]
       .venv/bin/python benchmarks/bench_allreduce.py --persons 5600 --split 5   (the 20 sites of bench_federated_scale)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import REPO, append_docs, load_average, machine
from bench_federated import harmonized_sample_sites
from bench_federated_scale import generate_and_map, split_sites

sys.path.insert(0, str(REPO))

from fedomop.federated import features  # noqa: E402
from fedomop.federated.models import xgb_common, xgb_histogram  # noqa: E402
from fedomop.federated.study import STUDIES_DIR, StudySpec, load_study  # noqa: E402

STUDY = STUDIES_DIR / "bone_metastasis.yaml"


@dataclass
class Link:
    """Bytes one site connection carried: up (site -> server) and down (server -> site)."""

    up: int = 0
    down: int = 0


@dataclass
class CountingRelay:
    """A TCP relay on 127.0.0.1 that forwards every connection to ``target`` and counts its bytes."""

    target: int
    links: list[Link] = field(default_factory=list)
    pumps: list[threading.Thread] = field(default_factory=list)
    port: int = 0

    def start(self) -> CountingRelay:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                site, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            link = Link()
            self.links.append(link)
            for args in ((site, server, link, "up"), (server, site, link, "down")):
                pump = threading.Thread(target=self._pump, args=args, daemon=True)
                pump.start()
                self.pumps.append(pump)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, link: Link, direction: str) -> None:
        try:
            while data := source.recv(1 << 16):
                setattr(link, direction, getattr(link, direction) + len(data))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop accepting and wait for the open connections to end (the sites' processes have exited)."""
        self._listener.close()
        for pump in self.pumps:
            pump.join(10)


def sites_to_measure(persons: int | None, parts: int, folder: Path) -> list[Path]:
    if persons is None:
        return harmonized_sample_sites(folder)
    four = generate_and_map(persons, folder)
    return four if parts == 1 else split_sites(four, parts, folder / "split")


def training_rows(db: Path, study: StudySpec) -> tuple[np.ndarray, np.ndarray]:
    """A site's 70% training rows, split as the ClientApp splits them."""
    train, _ = features.build_features(str(db), study).train_test(study)
    return train.X, train.y


def _train_site(args: tuple) -> bytes:
    X, y, edges, address, world, rank, trees = args
    record = xgb_histogram.site_train(X, y, edges, server_address=address, world_size=world, rank=rank, rounds=trees)
    return xgb_common.from_record(record)[0]


def measure(sites: list[Path], trees: int) -> dict:
    study = load_study(STUDY)
    rows = [training_rows(db, study) for db in sites]
    edges = xgb_histogram.global_edges([xgb_histogram.site_sketch(X, study.small_cell) for X, _ in rows])
    from xgboost.federated import run_federated_server

    port = xgb_histogram.free_port()
    run_federated_server(len(sites), port, blocking=False, timeout=600)
    relay = CountingRelay(port).start()
    started = time.perf_counter()
    jobs = [(X, y, edges, f"127.0.0.1:{relay.port}", len(sites), rank, trees) for rank, (X, y) in enumerate(rows)]
    with multiprocessing.get_context("spawn").Pool(len(sites)) as pool:
        models = pool.map(_train_site, jobs)
        seconds = time.perf_counter() - started
    relay.close()
    n_features = rows[0][0].shape[1]
    estimate = trees * (2 ** xgb_common.DEFAULT_PARAMS["max_depth"] - 1) * n_features * 256 * 16
    return {
        "sites": [db.stem for db in sites],
        "persons_train": [len(y) for _, y in rows],
        "features": n_features,
        "trees": trees,
        "seconds": seconds,
        "same_model": len(set(models)) == 1,
        "connections": len(relay.links),
        "up": [link.up for link in relay.links],
        "down": [link.down for link in relay.links],
        "estimate_per_site_per_direction": estimate,
    }


def site_list(result: dict) -> str:
    persons = result["persons_train"]
    if len(persons) <= 6:
        return ", ".join(f"{site} {n} training persons" for site, n in zip(result["sites"], persons, strict=True))
    return f"{min(persons)}-{max(persons)} training persons each"


def markdown(result: dict, command: str, loads: tuple[float, float]) -> str:
    per_site_up = sum(result["up"]) / len(result["sites"])
    per_site_down = sum(result["down"]) / len(result["sites"])
    total = sum(result["up"]) + sum(result["down"])
    estimate = result["estimate_per_site_per_direction"]
    return "\n".join(
        [
            f"## Histogram XGBoost's allreduce, measured on the wire ({dt.date.today().isoformat()})",
            "",
            f"Machine: {machine()}. 1-min load average before/after: {loads[0]:.1f} / {loads[1]:.1f}.",
            "",
            f"{len(result['sites'])} sites ({site_list(result)}), {result['features']} features, {result['trees']} trees of depth "
            f"{xgb_common.DEFAULT_PARAMS['max_depth']}, one process per site, through a byte-counting TCP relay "
            f"in front of XGBoost's federated server ({result['connections']} connections; TCP payload, so gRPC/HTTP2 "
            f"framing is counted and IP/TCP headers are not). Every site ended with "
            f"the same model: {result['same_model']}. Training took {result['seconds']:.1f} s.",
            "",
            "| | per site, site -> server | per site, server -> site | all sites, both directions |",
            "|---|---:|---:|---:|",
            f"| whole training | {per_site_up:,.0f} B | {per_site_down:,.0f} B | {total:,.0f} B |",
            f"| per tree | {per_site_up / result['trees']:,.0f} B | {per_site_down / result['trees']:,.0f} B | "
            f"{total / result['trees']:,.0f} B |",
            f"| tree-shape estimate used before (per site, each direction) | {estimate:,} B | {estimate:,} B | "
            f"{estimate * 2 * len(result['sites']):,} B |",
            "",
            f"Command: `{command}`",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", nargs="*", type=Path, help="harmonized site databases (default: map the samples)")
    parser.add_argument("--persons", type=int, help="generate the four sample sites at this size instead")
    parser.add_argument("--split", type=int, default=1, help="with --persons: split each site this many ways by person")
    parser.add_argument("--trees", type=int, default=60, help="boosting rounds (the federated default is 60)")
    parser.add_argument("--write-docs", action="store_true", help="append the result to docs/benchmarks.md")
    args = parser.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        sites = args.sites or sites_to_measure(args.persons, args.split, Path(tmp))
        result = measure(sites, args.trees)
    print(json.dumps(result))
    command = ".venv/bin/python benchmarks/bench_allreduce.py " + " ".join(sys.argv[1:])
    section = markdown(result, command.strip(), (load_before, load_average()))
    print(section)
    if args.write_docs:
        append_docs(section)


if __name__ == "__main__":
    main()
