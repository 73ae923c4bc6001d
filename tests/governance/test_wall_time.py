"""Every model's site work is bounded by the policy's ``limits.wall_time_s`` (the executor's alarm), not only the MLP's."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedomop.federated.executor import WallTimeExceeded, wall_time_bound


def test_xgboost_training_is_stopped_at_the_wall_time_budget():
    import xgboost as xgb

    rng = np.random.default_rng(0)
    data = xgb.DMatrix(rng.normal(size=(2000, 20)), label=rng.integers(0, 2, 2000))
    started = time.monotonic()
    with (
        pytest.raises(WallTimeExceeded, match=r"site_a: .*wall-time budget of 0.5 s") as info,
        wall_time_bound(0.5, "site_a"),
    ):
        xgb.train({"max_depth": 8, "nthread": 1}, data, num_boost_round=100_000)  # minutes without the bound
    assert time.monotonic() - started < 5
    assert info.value.where == "site policy: limits.wall_time_s" and "wall_time_s" in info.value.fix


def test_a_python_loop_that_swallows_exceptions_is_still_stopped():
    with pytest.raises(WallTimeExceeded), wall_time_bound(0.2, "site_b"):
        while True:
            try:
                time.sleep(0.01)
            except Exception:  # noqa: BLE001, S112 - what careless model code does
                continue


def test_work_within_the_budget_is_untouched_and_the_timer_is_cleared():
    with wall_time_bound(5.0, "site_a"):
        value = sum(range(1000))
    time.sleep(0.05)
    assert value == 499500
    import signal

    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
