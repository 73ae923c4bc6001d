"""Per-round federated evaluation history, as plain numbers for model cards and benchmarks."""

from __future__ import annotations

from typing import Any

History = dict[int, dict[str, float]]


def run_rounds(strategy: Any, grid: Any, initial: Any, rounds: int, config: dict[str, Any]) -> tuple[Any, History]:
    """Run a Flower strategy for ``rounds`` with the same config on train and evaluate messages;
    returns the final arrays and the per-round history (one place for every model's server loop)."""
    from flwr.app import ConfigRecord

    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=rounds,
        train_config=ConfigRecord(config),
        evaluate_config=ConfigRecord(config),
    )
    return result.arrays, history(result)


def history(result: Any) -> History:
    """The pooled-weighted client-side evaluation metrics of each round of a Flower strategy ``Result``."""
    return {
        int(rnd): {key: float(value) for key, value in record.items() if not isinstance(value, list)}
        for rnd, record in result.evaluate_metrics_clientapp.items()
    }
