"""The one small-cell policy (issue 12, item 3): one rule, two renderings, complementary suppression.

Expected values are worked out by hand from the rule: counts 1..threshold-1 are withheld, 0 and >= threshold
are released; the other parts of a total that has a withheld part are withheld too.
"""

from __future__ import annotations

import pytest

from fedomop.federated.governance import suppress_counts as federated_suppress_counts
from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.ground.smallcell import (
    DEFAULT_THRESHOLD,
    Count,
    percent,
    suppress,
    suppress_counts,
)
from fedomop.harmonize.validate.compare import site_summary


def test_default_threshold_is_ten_and_the_rule_is_one_to_threshold_minus_one() -> None:
    assert DEFAULT_THRESHOLD == 10
    counts = {"zero": 0, "one": 1, "nine": 9, "ten": 10, "big": 1234}
    assert suppress_counts(counts, render="label") == {"zero": 0, "one": "<10", "nine": "<10", "ten": 10, "big": 1234}


def test_the_rendering_is_presentation_only() -> None:
    counts = {"a": 0, "b": 3, "c": 5, "d": 120}
    as_report = suppress_counts(counts, 5, render="label")
    as_reply = suppress_counts(counts, 5, render="none")
    assert as_report == {"a": 0, "b": "<5", "c": 5, "d": 120}
    assert as_reply == {"a": 0, "b": None, "c": 5, "d": 120}
    # same cells withheld, whatever the rendering
    assert {k for k, v in as_report.items() if isinstance(v, str)} == {k for k, v in as_reply.items() if v is None}
    # the federated replies use this same implementation
    assert federated_suppress_counts(counts, 5) == as_reply


def test_a_withheld_part_cannot_be_recovered_from_its_total() -> None:
    # total 103 = 100 + 3: with 3 withheld, releasing 100 would give 103 - 100 = 3 back
    document = {
        "total": Count(103),
        "mapped": Count(100, "t"),
        "unmapped": Count(3, "t"),
        "pct": percent(Count(3, "t"), 103),
    }
    assert suppress(document, 10) == {"total": 103, "mapped": None, "unmapped": "<10", "pct": None}
    # a machine reply: the same cells withheld, both as None
    parts = suppress_counts({"male": 40, "female": 4, "unknown": 12}, 10, group="sex")
    assert parts == {"male": None, "female": None, "unknown": None}
    # no part small: all released, percent rounded to 4 places (100 * 50 / 200 = 25.0)
    clean = {"mapped": Count(150, "u"), "unmapped": Count(50, "u"), "pct": percent(Count(50, "u"), 200)}
    assert suppress(clean, 10) == {"mapped": 150, "unmapped": 50, "pct": 25.0}


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_a_threshold_below_one_or_not_whole_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="small-cell threshold"):
        suppress({"n": Count(3)}, bad)  # type: ignore[arg-type]


def _report(persons: object, records: object, threshold: int) -> dict:
    return {
        "site": "a",
        "suppression": {"small_cell_threshold": threshold},
        "persons": persons,
        "overview": {"checks": 10, "fatal_failures": 0, "by_kahn_category": []},
        "mapping_coverage": {"tables": []},
        "measurements": [
            {"concept_id": 3013721, "concept_name": "AST", "unit_name": "U/L", "median": 31.0, "records": records}
        ],
    }


def test_the_comparison_applies_the_rule_at_its_own_threshold() -> None:
    # a report written with threshold 5 shows 7 persons and 8 records; the comparison's policy (10) withholds both,
    # and the median over the withheld 8 records with them
    summary = site_summary(_report(7, 8, 5), small_cell=10)
    assert summary["persons"] == "<10"
    assert summary["measurement_medians"]["3013721"] == {
        "concept_name": "AST",
        "unit_name": "U/L",
        "median": None,
        "records": "<10",
    }
    # a report with a higher threshold keeps its own: 12 < 20 is withheld even though the comparison says 10
    assert site_summary(_report(12, 400, 20), small_cell=10)["persons"] == "<20"
    # labels already in a report stay as they are
    assert site_summary(_report("<10", 400, 10))["persons"] == "<10"
