"""ServerApp: FedAvg through the fault-tolerant Grid; writes the fault report as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedomop.federated.faults import FaultTolerantGrid, TooFewSitesError
from fedomop.federated.governance import check_outgoing

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    min_sites = int(config["min-sites"])
    received = {"replies": 0, "small_cells": 0}

    def inspect(reply: Message) -> None:  # everything the sites sent, as the hub received it
        if not reply.has_error():
            received["replies"] += 1
            received["small_cells"] += len(check_outgoing(reply.content, int(config["small-cell"])))

    tolerant = FaultTolerantGrid(
        grid, round_timeout=float(config["round-timeout"]), min_sites=min_sites, observers=[inspect]
    )
    strategy = FedAvg(
        fraction_evaluate=float(config["fraction-evaluate"]),
        min_train_nodes=min_sites,
        min_evaluate_nodes=min_sites,
        min_available_nodes=min_sites,
    )
    outcome: dict = {}
    try:
        result = strategy.start(
            grid=tolerant,
            initial_arrays=ArrayRecord({"w": Array(np.zeros(3))}),
            num_rounds=int(config["num-rounds"]),
            timeout=float(config["round-timeout"]),
        )
        outcome["weights"] = result.arrays["w"].numpy().tolist()
    except TooFewSitesError as error:
        outcome["error"] = str(error)
    finally:
        if config.get("report"):
            report = {
                **tolerant.report.to_dict(),
                **outcome,
                "received": received,
                "summary": tolerant.report.summary(),
            }
            Path(str(config["report"])).write_text(json.dumps(report, indent=2))
