"""Small-cell suppression and the outgoing-message checker."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import (
    assert_no_small_cells,
    check_outgoing,
    is_count_key,
    outgoing_sizes,
    require_min_persons,
    suppress_counts,
)


def test_suppress_counts():
    assert suppress_counts({"a": 0, "b": 3, "c": 5, "d": 120}, 5) == {"a": 0, "b": None, "c": 5, "d": 120}


def test_require_min_persons():
    require_min_persons(10, 10, what="mean age")
    with pytest.raises(PolicyError, match="mean age would be computed over fewer than 10 persons"):
        require_min_persons(9, 10, what="mean age")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("num-examples", True),
        ("n", True),
        ("n_persons", True),
        ("outcome.count", True),
        ("cohort-size", True),
        ("auroc", False),
        ("weights", False),
        ("learning-rate", False),
    ],
)
def test_count_keys(key, expected):
    assert is_count_key(key) is expected


def test_checker_finds_small_cells_in_every_record_kind():
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                {"weights": Array(np.array([0.5, 1.0, 2.0])), "bin-counts": Array(np.array([0, 3, 12, 7]))}
            ),
            "metrics": MetricRecord({"num-examples": 4, "auroc": 0.8, "n_events": [20, 2]}),
            "config": ConfigRecord({"model": b"\x00\x01", "cases": 1}),
        }
    )
    cells = {str(cell) for cell in check_outgoing(content, 5)}
    assert cells == {"arrays.bin-counts[1]", "metrics.num-examples", "metrics.n_events[1]", "config.cases"}
    with pytest.raises(PolicyError, match="4 count\\(s\\) below the small-cell threshold 5") as info:
        assert_no_small_cells(content, 5)
    assert "0.8" not in str(info.value) and "[20, 2]" not in str(info.value)


def test_checker_accepts_clean_reply_and_explicit_count_keys():
    content = RecordDict({"metrics": MetricRecord({"num-examples": 250, "auroc": 0.8, "size": 3})})
    assert check_outgoing(content, 10) == []
    assert [str(c) for c in check_outgoing(content, 10, count_keys={"size"})] == ["metrics.size"]


def test_outgoing_sizes_are_bytes_not_values():
    weights = np.zeros((10, 4), dtype=np.float32)
    content = RecordDict({"arrays": ArrayRecord({"w": Array(weights)}), "metrics": MetricRecord({"num-examples": 250})})
    sizes = outgoing_sizes(content)
    assert sizes["arrays.w"] >= weights.nbytes and sizes["metrics.num-examples"] == 8
