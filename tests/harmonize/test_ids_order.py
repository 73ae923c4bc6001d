"""Ids follow the lineage order whether or not the rows arrive in it (the sort is skipped only when they do)."""

from __future__ import annotations

import polars as pl

from fedomop.harmonize.run.ids import assign_ids


def _frame(rules: list[int], files: list[str | None], ords: list[int], targets: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"_rule": rules, "_source_file": files, "_ord": ords, "_target": targets, "v": list(range(len(rules)))}
    )


def test_rows_in_order_are_numbered_as_they_come() -> None:
    frame = _frame([0, 0, 0, 1], ["a", "a", "b", "a"], [0, 1, 0, 0], [1, 2, 1, 1])
    out = assign_ids(frame, "x_id", after=10)
    assert out["x_id"].to_list() == [11, 12, 13, 14]
    assert out["v"].to_list() == [0, 1, 2, 3]


def test_rows_out_of_order_are_sorted_first() -> None:
    # by hand: the sorted keys are (0,a,0,1) (0,a,1,1) (0,a,1,2) (0,b,0,1) (1,a,0,1)
    frame = _frame([1, 0, 0, 0, 0], ["a", "b", "a", "a", "a"], [0, 0, 1, 1, 0], [1, 1, 2, 1, 1])
    out = assign_ids(frame, "x_id")
    assert out["v"].to_list() == [4, 3, 2, 1, 0]
    assert out["x_id"].to_list() == [1, 2, 3, 4, 5]


def test_a_tie_broken_only_by_the_last_column_is_noticed() -> None:
    frame = _frame([0, 0], ["a", "a"], [3, 3], [2, 1])
    assert assign_ids(frame, "x_id")["v"].to_list() == [1, 0]


def test_nulls_leave_the_order_to_the_sort() -> None:
    frame = _frame([0, 0, 0], ["b", None, "a"], [0, 0, 0], [1, 1, 1])
    assert (
        assign_ids(frame, "x_id")["v"].to_list()
        == frame.sort("_rule", "_source_file", "_ord", "_target")["v"].to_list()
    )
