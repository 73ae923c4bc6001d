"""Routing by domain and the duplicate-id check, on frames worked out by hand.

Both skip work on their common case (a rule whose rows all go to its own table; rows already in batch order);
these tests pin the result in that case and in the other one, so the short cut cannot change what is loaded.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import polars as pl

from fedomop.harmonize.mapping.models import Rule
from fedomop.harmonize.run.build import SiteBuild
from fedomop.harmonize.run.quarantine import Quarantine
from fedomop.harmonize.run.rules import RuleEvaluator, RunContext


def _rows(domains: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame({"_domain": domains, "v": list(range(len(domains)))}, schema_overrides={"_domain": pl.String})


def test_rows_go_to_the_table_of_their_domain_in_their_order() -> None:
    rows = _rows(["Measurement", "Observation", None, "Measurement", "Drug", "Observation", "Spec Anatomic Site"])
    routed = SiteBuild._route("measurement", True, rows)
    # by hand: no domain and a domain without a table stay in the rule's table; first appearance orders the keys
    assert list(routed) == ["measurement", "observation", "drug_exposure"]
    assert routed["measurement"]["v"].to_list() == [0, 2, 3, 6]
    assert routed["observation"]["v"].to_list() == [1, 5]
    assert routed["drug_exposure"]["v"].to_list() == [4]
    assert all(part.columns == ["_domain", "v"] for part in routed.values())


def test_a_rule_whose_rows_stay_home_hands_its_frame_on_as_it_is() -> None:
    rows = _rows(["Condition", None, "Condition"])
    routed = SiteBuild._route("condition_occurrence", True, rows)
    assert list(routed) == ["condition_occurrence"]
    assert routed["condition_occurrence"] is rows
    # every row routed elsewhere: all of them go there; a row without a domain stays
    assert list(SiteBuild._route("observation", True, rows.head(1))) == ["condition_occurrence"]
    assert {k: v["v"].to_list() for k, v in SiteBuild._route("observation", True, rows).items()} == {
        "condition_occurrence": [0, 2],
        "observation": [1],
    }


def test_rows_are_not_routed_when_the_rule_says_not_to_or_has_no_domain() -> None:
    rows = _rows(["Observation"])
    assert SiteBuild._route("measurement", False, rows)["measurement"] is rows
    assert SiteBuild._route("measurement", True, rows.drop("_domain"))["measurement"].height == 1
    assert SiteBuild._route("measurement", True, _rows([])) == {}


def _evaluator() -> tuple[RuleEvaluator, Quarantine]:
    quarantine = Quarantine("run")
    return RuleEvaluator(cast(RunContext, SimpleNamespace(quarantine=quarantine))), quarantine


def _keyed(ords: list[int], keys: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "_ord": ords,
            "_source_key": keys,
            "_source_file": ["f.csv"] * len(ords),
            "_source_row": [str(o + 1) for o in ords],
            "_declared": ["person"] * len(ords),
        }
    )


def test_the_first_record_of_an_id_in_batch_order_wins_whatever_order_the_rows_come_in() -> None:
    rule = Rule(source="patients", id="pid")
    for ords in ([0, 1, 2, 3, 4], [3, 0, 4, 2, 1]):
        keys = {0: "a", 1: "b", 2: "a", 3: "c", 4: "b"}  # by hand: rows 2 and 4 repeat a and b
        evaluator, quarantine = _evaluator()
        kept = evaluator._drop_duplicates(rule, _keyed(ords, [keys[o] for o in ords]))
        assert kept["_ord"].to_list() == [0, 1, 3]
        assert kept["_source_key"].to_list() == ["a", "b", "c"]
        refused = quarantine.frame()
        assert sorted(refused["source_row"].to_list()) == ["3", "5"]
        assert set(refused["reason"].to_list()) == {"duplicate id"}
