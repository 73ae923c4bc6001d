"""``when:`` and ``exclude:`` conditions: ``is_null`` and ``and`` (conditions on several columns), by hand."""

from __future__ import annotations

import polars as pl
import pytest

from fedomop.harmonize.mapping.models import Filter, Source
from fedomop.harmonize.run.rules import filter_mask

ROWS = pl.DataFrame(
    {
        "panel": ["true", "true", "true", "false", None],
        "value": [None, 13.0, None, 2.0, None],
        "text": [None, None, "not-performed", None, None],
    }
)


def _selected(condition: dict[str, object]) -> list[bool]:
    return ROWS.select(filter_mask(Filter.model_validate(condition))).to_series().to_list()


def test_a_panel_without_a_value_of_its_own() -> None:
    """Only row 0 has components (panel true) and neither a number nor a text result."""
    condition = {"column": "panel", "equals": "true", "and": [{"column": "value", "is_null": True},
                                                               {"column": "text", "is_null": True}]}  # fmt: skip
    assert _selected(condition) == [True, False, False, False, False]


def test_is_null_alone_and_nested_and() -> None:
    assert _selected({"column": "text", "is_null": True}) == [True, True, False, True, True]
    nested = {"column": "panel", "not_null": True, "and": [{"column": "value", "is_null": True,
              "and": [{"column": "text", "not_null": True}]}]}  # fmt: skip
    assert _selected(nested) == [False, False, True, False, False]


def test_the_columns_of_a_condition_and_its_description() -> None:
    condition = Filter.model_validate(
        {"column": "panel", "equals": "true", "and": [{"column": "value", "is_null": True}]}
    )
    assert condition.columns() == ["panel", "value"]
    assert condition.describe() == "`panel` = true and `value` is empty"


def test_an_exclude_naming_an_undeclared_column_is_refused() -> None:
    with pytest.raises(ValueError, match="exclude: column 'valu' is not one of this source's columns"):
        Source.model_validate(
            {
                "format": "fhir_ndjson",
                "files": "Observation*.ndjson",
                "resource_type": "Observation",
                "columns": {"id": "id", "panel": "component.exists()", "value": "valueQuantity.value"},
                "exclude": [
                    {
                        "column": "panel",
                        "equals": "true",
                        "and": [{"column": "valu", "is_null": True}],
                        "reason": "panel",
                    }
                ],  # fmt: skip
            }
        )
