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


def test_references_of_several_rules_are_joined_once_with_the_same_ids() -> None:
    persons = pl.DataFrame({"_key": ["p1", "p2", "p3"], "_id": [10, 20, 30]})
    visits = pl.DataFrame({"_key": ["v1", "v2"], "_id": [100, 200]})
    ctx = SimpleNamespace(keys={"person": persons, "visit_occurrence": visits})
    evaluator = RuleEvaluator(cast(RunContext, ctx))
    batches = {
        "labs": pl.DataFrame({"pid": ["p2", "p9", None, "p1"], "enc": ["v2", "v1", "v7", None]}),
        "drugs": pl.DataFrame({"patient": ["p3", "p1"], "enc": ["v1", "v1"]}),
        "notes": pl.DataFrame({"pid": ["p1"], "enc": ["v2"]}),
    }
    rules = [
        Rule(source="labs", person="pid", visit="enc"),
        Rule(source="drugs", person="patient", visit="enc"),
        Rule(source="notes", person="pid", visit="enc", when={"column": "pid", "equals": "p1"}),
        Rule(source="absent", person="pid"),
    ]
    shared = evaluator.share_reference_joins(rules, batches)
    # by hand: unknown or missing keys give no id; the filtered rule (notes) keeps its own join
    labs, drugs = shared["labs"], shared["drugs"]
    assert labs["_shared_id:person:pid"].to_list() == [20, None, None, 10]
    assert labs["_shared_id:visit_occurrence:enc"].to_list() == [200, 100, None, None]
    assert drugs["_shared_id:person:patient"].to_list() == [30, 10]
    assert drugs["_shared_id:visit_occurrence:enc"].to_list() == [100, 100]
    assert shared["notes"] is batches["notes"]
    for rows, column in ((labs, "pid"), (drugs, "patient")):  # the rule reads the shared ids as its own join's
        assert (
            evaluator._ids(rows, column, "person", "_person_id")["_person_id"].to_list()
            == rows[f"_shared_id:person:{column}"].to_list()
        )
    assert evaluator._ids(batches["notes"], "pid", "person", "_person_id")["_person_id"].to_list() == [10]


def test_a_reference_made_by_one_rule_alone_is_left_to_that_rule() -> None:
    ctx = SimpleNamespace(keys={"person": pl.DataFrame({"_key": ["p1"], "_id": [1]})})
    batches = {"labs": pl.DataFrame({"pid": ["p1"]})}
    shared = RuleEvaluator(cast(RunContext, ctx)).share_reference_joins([Rule(source="labs", person="pid")], batches)
    assert shared["labs"] is batches["labs"]
