"""ClientApp: one least-squares gradient step on site-local synthetic data, behind the site policy gate."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedomop.federated.governance.mods import governance_mod

app = ClientApp(mods=[governance_mod(code_dir=Path(__file__).parent)])


def _site_data(context: Context) -> tuple[np.ndarray, np.ndarray]:
    seed = int(context.node_config.get("seed", 0))
    rows = int(context.node_config.get("rows", 200))
    if seed == int(context.run_config.get("small-site", -1)):
        rows = int(context.run_config["small-rows"])
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    return x, x @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.1, size=len(x))


@app.train()
def train(message: Message, context: Context) -> Message:
    time.sleep(float(context.run_config.get("train-seconds", 0.0)))
    weights = message.content["arrays"]["w"].numpy()
    x, y = _site_data(context)
    weights = weights - 0.5 * (2 / len(x)) * x.T @ (x @ weights - y)
    metrics = MetricRecord({"num-examples": len(x), "cohort-size": len(x)})
    return Message(RecordDict({"arrays": ArrayRecord({"w": Array(weights)}), "metrics": metrics}), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    weights = message.content["arrays"]["w"].numpy()
    x, y = _site_data(context)
    metrics = MetricRecord({"num-examples": len(x), "mse": float(np.mean((x @ weights - y) ** 2))})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)
