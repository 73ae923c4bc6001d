"""No silent truncation: a text longer than its OMOP varchar column gets a deterministic short form, recorded.

The CDM fixes column lengths (``*_source_value`` varchar(50), ``note_title`` varchar(250) ...) and PostgreSQL
refuses longer text. Quarantining the record would lose a valid clinical fact for a bookkeeping field, so the
record is loaded with the column holding ``<first length-9 characters>~<8 hex digits of SHA-256 of the whole
value>`` (the same value always gives the same short form, and two long values that share a prefix stay
distinct), and every shortened value is written whole to ``fedomop_shortened`` with the record it came from.
The run summary counts them; nothing is cut without a row saying so.
"""

from __future__ import annotations

import hashlib

import polars as pl

SHORTENED_TABLE = "fedomop_shortened"
SHORTENED_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "omop_table": pl.String(),
    "omop_column": pl.String(),
    "max_length": pl.Int64(),
    "source": pl.String(),
    "source_file": pl.String(),
    "source_row": pl.String(),
    "full_value": pl.String(),
    "short_value": pl.String(),
}
_DIGEST = 8


def short_form(value: str, length: int) -> str:
    """``value`` cut to ``length`` characters, ending in "~" and 8 hex digits of its SHA-256 (deterministic)."""
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:_DIGEST]
    if length <= _DIGEST + 1:
        return digest[:length]
    return value[: length - _DIGEST - 1] + "~" + digest


class Shortened:
    """Collects the values a run shortened (one row per record and column)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._parts: list[pl.DataFrame] = []

    def fit(self, table: str, column: str, length: int, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with ``column`` (already text) no longer than ``length``; what was longer is recorded."""
        too_long = pl.col(column).str.len_chars() > length
        long_rows = frame.filter(too_long)
        if not long_rows.height:
            return frame
        forms = {v: short_form(v, length) for v in long_rows.get_column(column).unique().to_list()}
        lineage = [
            pl.col(c).cast(pl.String) if c in long_rows.columns else pl.lit(None, pl.String)
            for c in ("_source", "_source_file", "_source_row")
        ]
        self._parts.append(
            long_rows.select(
                pl.lit(self.run_id).alias("run_id"),
                pl.lit(table).alias("omop_table"),
                pl.lit(column).alias("omop_column"),
                pl.lit(length, pl.Int64).alias("max_length"),
                lineage[0].alias("source"),
                lineage[1].alias("source_file"),
                lineage[2].alias("source_row"),
                pl.col(column).alias("full_value"),
                pl.col(column).replace_strict(forms, return_dtype=pl.String).alias("short_value"),
            )
        )
        shortened = pl.when(too_long).then(pl.col(column).replace(forms)).otherwise(pl.col(column))
        return frame.with_columns(shortened.alias(column))

    def frame(self) -> pl.DataFrame:
        if not self._parts:
            return pl.DataFrame(schema=SHORTENED_SCHEMA)
        return pl.concat(self._parts)

    def clear(self) -> None:
        self._parts = []
