"""Per-round federated evaluation history, as plain numbers for model cards and benchmarks."""

from __future__ import annotations

from typing import Any

History = dict[int, dict[str, float]]


def history(result: Any) -> History:
    """The pooled-weighted client-side evaluation metrics of each round of a Flower strategy ``Result``."""
    return {
        int(rnd): {key: float(value) for key, value in record.items() if not isinstance(value, list)}
        for rnd, record in result.evaluate_metrics_clientapp.items()
    }
