"""Reconciliation: every record read is loaded or quarantined; a record that is neither makes the run fail."""

from __future__ import annotations

import polars as pl
import pytest

from fedomop.harmonize.ground.errors import ReconciliationError
from fedomop.harmonize.run.lineage import RecordLedger
from fedomop.harmonize.run.load import check_reconciliation as _check_reconciliation
from fedomop.harmonize.run.quarantine import QUARANTINE_SCHEMA

QUARANTINE = {**QUARANTINE_SCHEMA, "_ord": pl.Int64()}


def _rows(ords: list[int], source: str = "patients") -> pl.DataFrame:
    return pl.DataFrame(
        {"_source": [source] * len(ords), "_ord": ords}, schema={"_source": pl.String, "_ord": pl.Int64}
    )


def _quarantine(rows: list[tuple[str, str, str, str | None, int | None]]) -> pl.DataFrame:
    """(source, file, row, omop_table, _ord) -> quarantine rows."""
    return pl.DataFrame(
        [("r", source, file, row, "f", "v", "why", table, ordinal) for source, file, row, table, ordinal in rows],
        schema=QUARANTINE,
        orient="row",
    )


def test_balanced_sources_count_records_once_even_when_they_fill_several_tables() -> None:
    ledger = RecordLedger({"patients": 3})
    ledger.mark_loaded("person", _rows([0, 1]))
    ledger.mark_loaded("death", _rows([0]))
    ledger.mark_quarantined(_quarantine([("patients", "p.csv", "3", "person", 2)]))
    recon = ledger.reconciliation("r", {"patients": 3}, {"patients": {"person", "death"}})
    total = recon.filter(pl.col("omop_table") == "*").row(0, named=True)
    assert (total["source_count"], total["loaded"], total["quarantined"], total["balanced"]) == (3, 2, 1, True)
    per_table = recon.filter(pl.col("omop_table") != "*").select("omop_table", "source_count", "loaded", "quarantined")
    assert per_table.rows() == [("death", 1, 1, 0), ("person", 3, 2, 1)]
    _check_reconciliation(recon)  # does not raise


def test_a_record_both_loaded_and_refused_elsewhere_counts_as_loaded() -> None:
    ledger = RecordLedger({"labs": 2})
    ledger.mark_loaded("measurement", _rows([0, 1, 1], "labs"))  # record 1 has two "Maps to" targets
    ledger.mark_quarantined(_quarantine([("labs", "l.csv", "2", "observation", 1)]))
    recon = ledger.reconciliation("r", {"labs": 2}, {"labs": {"measurement", "observation"}})
    assert recon.filter(pl.col("omop_table") == "*").select("loaded", "quarantined", "balanced").row(0) == (2, 0, True)
    assert recon.filter(pl.col("omop_table") == "measurement").item(0, "loaded") == 2


def test_read_time_rejects_and_unselected_rows_are_counted() -> None:
    ledger = RecordLedger({"labs": 3})
    ledger.mark_loaded("measurement", _rows([0], "labs"))
    ledger.mark_quarantined(_quarantine([("labs", "l.csv", "9", None, None), ("labs", "l.csv", "9", None, None)]))
    left = ledger.unaccounted("labs")
    assert left.tolist() == [False, True, True]
    ledger.mark_held("labs", left)
    recon = ledger.reconciliation("r", {"labs": 4}, {})
    assert recon.filter(pl.col("omop_table") == "*").select("loaded", "quarantined", "balanced").row(0) == (1, 3, True)


def test_a_lost_record_raises_reconciliation_error() -> None:
    ledger = RecordLedger({"patients": 2})
    ledger.mark_loaded("person", _rows([0]))
    recon = ledger.reconciliation("r", {"patients": 2}, {})
    with pytest.raises(ReconciliationError, match="source 'patients': 2 records read but 1 loaded \\+ 0 quarantined"):
        _check_reconciliation(recon)
