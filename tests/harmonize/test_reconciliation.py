"""Reconciliation: a source whose records are neither loaded nor quarantined makes the run fail."""

from __future__ import annotations

import polars as pl
import pytest

from harmonize.engine import _check_reconciliation
from harmonize.errors import ReconciliationError
from harmonize.lineage import LINEAGE_SCHEMA, reconcile
from harmonize.quarantine import QUARANTINE_SCHEMA


def _lineage(rows: list[tuple[str, int, str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        [("r", table, omop_id, source, file, row) for table, omop_id, source, file, row in rows],
        schema=LINEAGE_SCHEMA,
        orient="row",
    )


def test_balanced_sources_count_records_once_even_when_they_fill_several_tables() -> None:
    lineage = _lineage(
        [
            ("person", 1, "patients", "p.csv", "1"),
            ("death", 1, "patients", "p.csv", "1"),
            ("person", 2, "patients", "p.csv", "2"),
        ]
    )
    quarantine = pl.DataFrame(
        [("r", "patients", "p.csv", "3", "birth", "x", "bad date", "person")], schema=QUARANTINE_SCHEMA, orient="row"
    )
    recon = reconcile("r", {"patients": 3}, lineage, quarantine, {"patients": {"person", "death"}})
    total = recon.filter(pl.col("omop_table") == "*").row(0, named=True)
    assert (total["source_count"], total["loaded"], total["quarantined"], total["balanced"]) == (3, 2, 1, True)
    per_table = recon.filter(pl.col("omop_table") != "*").select("omop_table", "source_count", "loaded", "quarantined")
    assert per_table.rows() == [("death", 1, 1, 0), ("person", 3, 2, 1)]
    _check_reconciliation(recon)  # does not raise


def test_a_lost_record_raises_reconciliation_error() -> None:
    lineage = _lineage([("person", 1, "patients", "p.csv", "1")])
    recon = reconcile("r", {"patients": 2}, lineage, pl.DataFrame(schema=QUARANTINE_SCHEMA), {})
    with pytest.raises(ReconciliationError, match="source 'patients': 2 records read but 1 loaded \\+ 0 quarantined"):
        _check_reconciliation(recon)
