"""``date_format: iso`` (the default) reads ISO 8601 as sites write it; expected values are read off the text.

ISO 8601 allows a time without seconds (``10:00``), the basic date form (``20190201``) and an offset or ``Z``;
the offset is dropped on purpose (the local wall-clock time is kept, docs/mapping.md). A value that is not a
date must stay null, so the engine quarantines it as "bad date" with the original text.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from fedomop.harmonize.ground.parsing import failed, parse_datetime

CASES = [
    ("2019-02-01", dt.datetime(2019, 2, 1)),
    ("20190201", dt.datetime(2019, 2, 1)),
    ("2019-02-01T10:00", dt.datetime(2019, 2, 1, 10, 0)),
    ("2019-02-01 10:00", dt.datetime(2019, 2, 1, 10, 0)),
    ("2019-02-01T10:00Z", dt.datetime(2019, 2, 1, 10, 0)),
    ("2019-02-01T23:30-05:00", dt.datetime(2019, 2, 1, 23, 30)),
    ("2019-02-01T10:00:30", dt.datetime(2019, 2, 1, 10, 0, 30)),
    ("2019-02-01T10:00:30.250+01:00", dt.datetime(2019, 2, 1, 10, 0, 30)),
    (" 2019-02-01 ", dt.datetime(2019, 2, 1)),
    ("2019-02-30", None),  # no such day
    ("20191301", None),  # no 13th month
    ("2019-02-01T25:00", None),  # no 25th hour
    ("2019-02-01T10:00:3", None),  # seconds cut short: not read as 10:00
    ("2019-02-01T10", None),  # an hour alone
    ("01/02/2019", None),  # not ISO: declare date_format "%d/%m/%Y"
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0].strip() or "blank" for c in CASES])
def test_iso_8601_as_sites_write_it(text: str, expected: dt.datetime | None) -> None:
    frame = pl.DataFrame({"d": [text]}).select(
        parse_datetime("d", "iso").alias("p"), failed("d", parse_datetime("d", "iso")).alias("bad")
    )
    assert frame.row(0) == (expected, expected is None)
