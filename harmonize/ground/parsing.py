"""Vectorised parsing of source text into dates and numbers, keeping the failures so they can be quarantined.

Parsers return polars expressions; a value that is present but does not parse becomes null *and* is flagged,
so the engine can write it to the quarantine with the original text instead of losing it.
"""

from __future__ import annotations

import polars as pl

ISO = "iso"
FHIR = "fhir"  # FHIR date/dateTime: YYYY, YYYY-MM, YYYY-MM-DD, or YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm)
MID_YEAR = "-06-15"  # OHDSI THEMIS #93: a year-only date stands for 15 June of that year


def _has_time(fmt: str) -> bool:
    return any(token in fmt for token in ("%H", "%M", "%S", "%T", "%I"))


def parse_datetime(column: str, fmt: str) -> pl.Expr:
    """Text -> naive datetime. ``iso`` (ISO 8601) accepts a date (``2019-02-01``, or the basic ``20190201``),
    a date and time with or without seconds (``T`` or a space between), fractional seconds (dropped) and a UTC
    offset or ``Z`` (dropped: the local wall-clock time the source recorded is kept)."""
    text = pl.col(column).str.strip_chars()
    if fmt == ISO:
        size = text.str.len_chars()
        seconds = text.str.slice(0, 19).str.replace("T", " ", literal=True)
        minutes = text.str.slice(0, 16).str.replace("T", " ", literal=True) + ":00"
        after_minutes = text.str.slice(16, 1)  # ":" (seconds follow), "" (the end), or an offset's Z, + or -
        day = text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us"))
        return (
            pl.when((size >= 19) & (after_minutes == ":"))
            .then(seconds.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False))
            .when((size >= 16) & (after_minutes != ":"))
            .then(minutes.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False))
            .when(size == 8)  # 20190201; or a short extended date such as 2019-2-1, which chrono has always read
            .then(pl.coalesce(text.str.to_date("%Y%m%d", strict=False).cast(pl.Datetime("us")), day))
            .otherwise(day)
        )
    if _has_time(fmt):
        return text.str.to_datetime(fmt, strict=False)
    return text.str.to_date(fmt, strict=False).cast(pl.Datetime("us"))


def parse_fhir_datetime(column: str) -> pl.Expr:
    """FHIR ``date``/``dateTime`` text -> naive datetime in the source's local wall-clock time.

    Partial precision is valid FHIR and common in de-identified data, so it is completed, never refused:
    ``YYYY-MM`` -> the first of the month, ``YYYY`` -> 15 June (OHDSI THEMIS #93, the convention for an
    incomplete birth date, applied to every event date), no time -> midnight. A time-zone offset is not
    converted: the recorded local time is kept, so an event keeps the calendar day on which it happened
    (converting to UTC would move a 23:30-05:00 visit to the next day). :func:`fhir_precision` says which parts
    were given, so a person's month/day of birth stay NULL when the source did not have them.
    """
    text = pl.col(column).cast(pl.String).str.strip_chars()
    size = text.str.len_chars()
    full = text.str.slice(0, 19).str.replace("T", " ").str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False)
    day = text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us"))
    month = (text + "-01").str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us"))
    year = (text + MID_YEAR).str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us"))
    return (
        pl.when(size >= 19)
        .then(full)
        .when(size == 10)
        .then(day)
        .when(size == 7)
        .then(month)
        .when(size == 4)
        .then(year)
        .otherwise(pl.lit(None, pl.Datetime("us")))
    )


def fhir_precision(column: str) -> pl.Expr:
    """ "year", "month", "day" or "time": how much of a FHIR date/dateTime the source gave (null when absent)."""
    size = pl.col(column).cast(pl.String).str.strip_chars().str.len_chars()
    return (
        pl.when(size == 4)
        .then(pl.lit("year"))
        .when(size == 7)
        .then(pl.lit("month"))
        .when(size == 10)
        .then(pl.lit("day"))
        .when(size >= 19)
        .then(pl.lit("time"))
    )


def parse_any_datetime(column: str, fmt: str) -> pl.Expr:
    """:func:`parse_fhir_datetime` for the ``fhir`` format, else :func:`parse_datetime`."""
    return parse_fhir_datetime(column) if fmt == FHIR else parse_datetime(column, fmt)


def parse_number(column: str, decimal: str = ".") -> pl.Expr:
    """Text -> float; a decimal comma is accepted where the source declares it. NaN and infinities ("NaN",
    "inf", "-Infinity", or an overflow such as 1e999) are not measurements: they parse to nothing, so a present
    value gives "unparseable number" (``failed``) instead of loading a non-finite value_as_number.

    With ``decimal: ","`` a dot is read only as a thousands separator between groups of three digits
    (``1.234,5``); any other dot (``2.5``, ``0.25``: a value written with a decimal point after all) makes the
    value unparseable, never 25: dropping it would load a number 10 or 100 times too large."""
    text = pl.col(column).cast(pl.String).str.strip_chars()
    if decimal == ",":
        grouped = text.str.contains(_GROUPED_THOUSANDS)
        dotted = text.str.contains(".", literal=True)
        text = (
            pl.when(dotted & ~grouped)
            .then(pl.lit(None, pl.String))
            .otherwise(text.str.replace_all(".", "", literal=True).str.replace(",", ".", literal=True))
        )
    value = text.cast(pl.Float64, strict=False)
    return pl.when(value.is_finite()).then(value).otherwise(None)


_GROUPED_THOUSANDS = r"^[+-]?\d{1,3}(\.\d{3})+(,\d*)?([eE][+-]?\d+)?$"  # 1.234 / 12.345.678,9 / -1.000,5


def failed(original: str, parsed: pl.Expr) -> pl.Expr:
    """True where the source had a value but parsing gave nothing."""
    present = pl.col(original).is_not_null() & (pl.col(original).cast(pl.String).str.strip_chars() != "")
    return present & parsed.is_null()
