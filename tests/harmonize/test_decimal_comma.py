"""``decimal: ","``: a dot is a thousands separator only between groups of three digits; expected by hand.

A lab export declared with a decimal comma that still writes ``0.25`` must not load 25 (the dot dropped): the
value is "unparseable number" and goes to the quarantine with its text.
"""

from __future__ import annotations

import polars as pl
import pytest

from fedomop.harmonize.ground.parsing import failed, parse_number

CASES = [
    ("2,5", 2.5),
    (" 3,0 ", 3.0),
    ("1.234,5", 1234.5),
    ("12.345.678,9", 12345678.9),
    ("-1.000,5", -1000.5),
    ("1.234", 1234.0),  # a thousands group, as the declared locale writes it
    ("1,5e2", 150.0),
    ("7", 7.0),
    ("2.5", None),  # a decimal point in a decimal-comma file: not 25
    ("0.25", None),  # not 25
    ("1.23", None),
    ("1.2345,6", None),
    ("1.000.00", None),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0].strip() for c in CASES])
def test_decimal_comma(text: str, expected: float | None) -> None:
    parsed = parse_number("v", ",")
    row = pl.DataFrame({"v": [text]}).select(parsed.alias("p"), failed("v", parsed).alias("bad")).row(0)
    assert row == (pytest.approx(expected) if expected is not None else None, expected is None)
