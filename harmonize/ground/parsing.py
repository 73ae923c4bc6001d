"""Vectorised parsing of source text into dates and numbers, keeping the failures so they can be quarantined.

Parsers return polars expressions; a value that is present but does not parse becomes null *and* is flagged,
so the engine can write it to the quarantine with the original text instead of losing it.
"""

from __future__ import annotations

import polars as pl

ISO = "iso"


def _has_time(fmt: str) -> bool:
    return any(token in fmt for token in ("%H", "%M", "%S", "%T", "%I"))


def parse_datetime(column: str, fmt: str) -> pl.Expr:
    """Text -> naive datetime. ``iso`` accepts dates, datetimes, fractional seconds and UTC offsets (kept as
    the local wall-clock time the source recorded)."""
    text = pl.col(column).str.strip_chars()
    if fmt == ISO:
        stamp = text.str.slice(0, 19).str.replace("T", " ")
        return (
            pl.when(text.str.len_chars() >= 19)
            .then(stamp.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False))
            .otherwise(text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")))
        )
    if _has_time(fmt):
        return text.str.to_datetime(fmt, strict=False)
    return text.str.to_date(fmt, strict=False).cast(pl.Datetime("us"))


def parse_number(column: str, decimal: str = ".") -> pl.Expr:
    """Text -> float; a decimal comma is accepted where the source declares it."""
    text = pl.col(column).cast(pl.String).str.strip_chars()
    if decimal == ",":
        text = text.str.replace_all(".", "", literal=True).str.replace(",", ".", literal=True)
    return text.cast(pl.Float64, strict=False)


def failed(original: str, parsed: pl.Expr) -> pl.Expr:
    """True where the source had a value but parsing gave nothing."""
    present = pl.col(original).is_not_null() & (pl.col(original).cast(pl.String).str.strip_chars() != "")
    return present & parsed.is_null()
