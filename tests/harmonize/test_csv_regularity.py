"""The vectorised "is this CSV regular?" check may only ever be stricter than the csv module.

A file it calls regular is handed to polars as is, so every record must have the header's width and no control
character - decided here independently, record by record, by Python's csv module on thousands of random small
files built from the characters that make CSV hard (delimiters, quotes, CR, LF, NUL, tab, non-ASCII).
"""

from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path

import polars as pl
import pytest

from fedomop.harmonize.sources import tabular
from fedomop.harmonize.sources.options import TabularOptions
from fedomop.harmonize.sources.tabular import _is_regular, regular_file_shape

CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _regular_by_csv_module(text: str, delimiter: str) -> bool:
    if not text or CONTROL.search(text):
        return False
    try:
        records = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except csv.Error:
        return False
    return bool(records) and all(len(r) == len(records[0]) for r in records)


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_random_files_called_regular_are_regular_for_the_csv_module(delimiter: str) -> None:
    rng = random.Random(20261207)
    alphabet = ["a", "b", "é", delimiter, delimiter, '"', "\n", "\n", "\r\n", "\r", "\x00", "\x7f", "\t", " "]
    called_regular = 0
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        for encoded in (None, text.encode("utf-8")):
            if _is_regular(text, TabularOptions(delimiter=delimiter), encoded):
                called_regular += 1
                assert _regular_by_csv_module(text, delimiter), repr(text)
    assert called_regular > 50  # the check is not simply always False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b\n1,2\n", True),
        ("a,b\r\n1,2\r\n", True),
        ("a,b\n1,2", True),  # no newline after the last record
        ('a,b\n"x,y",2\n', True),  # a delimiter inside a quoted field
        ('a,b\n"a""b",c\n', True),  # a doubled quote
        ("a,b\n1,é\n", True),
        ("a,b\n1\n", False),  # short row
        ("a,b\n1,2,3\n", False),  # long row
        ('a,b\n"x\ny",2\n', False),  # a quoted field over two lines: the csv module's path keeps row numbers
        ("a,b\n1,2\n\n3,4\n", False),  # a blank line is not a record
        ("a,b\n1,\x002\n", False),  # NUL
        ("a,b\n1\r2,3\n", False),  # a lone CR
    ],
)
def test_hand_written_cases(text: str, expected: bool) -> None:
    assert _is_regular(text, TabularOptions()) is expected
    assert _is_regular(text, TabularOptions(), text.encode("utf-8")) is expected


def test_the_block_by_block_file_check_agrees_with_the_whole_file_check(tmp_path: Path) -> None:
    """Big sites are checked a block of whole lines at a time (``regular_file_shape``): for any block size the
    answer is the one the whole text gets - a blank line or a different width at a block's edge included."""
    rng = random.Random(7)
    alphabet = ["a", "é", ",", ",", '"', "\n", "\n", "\r\n", "\x00", " "]
    path = tmp_path / "f.csv"
    for _ in range(600):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        path.write_bytes(text.encode("utf-8"))
        whole = _is_regular(text, TabularOptions())
        for block in (1, 2, 5, 64):
            regular = regular_file_shape(path, TabularOptions(), block_bytes=block) is not None
            assert regular is whole, (repr(text), block)


def test_the_check_in_cache_sized_pieces_agrees_with_the_whole_text_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unquoted check runs over pieces cut at line ends (``_PIECE_BYTES``, for the CPU cache): for any piece
    size - smaller than a line included - the answer is the one the text gets in one piece."""
    rng = random.Random(11)
    alphabet = ["a", "é", ",", ",", '"', "\n", "\n", "\r\n", "\x00", "\t", " "]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(800)]
    whole = [_is_regular(text, TabularOptions()) for text in texts]
    for piece in (1, 2, 3, 7, 16):
        monkeypatch.setattr(tabular, "_PIECE_BYTES", piece)
        for text, expected in zip(texts, whole, strict=True):
            assert _is_regular(text, TabularOptions()) is expected, (repr(text), piece)


def _shape(text: str, delimiter: str = ",") -> tabular.LineShape | None:
    data = text.encode("utf-8")
    return tabular._line_shape(data, 0, len(data), TabularOptions(delimiter=delimiter), text)


@pytest.mark.parametrize(
    ("text", "padded"),
    [
        ("a,b\nx,y\n", False),
        ("a,b\n x,y\n", True),  # leading space
        ("a,b\nx,y \n", True),  # trailing space at the line's end
        ("a,b\nx ,y\r\n", True),  # trailing space before a delimiter, CRLF
        ("a,b\nx,y\r\n", False),
        ("a,b\nx,\u00a0y\n", True),  # NO-BREAK SPACE: Unicode White_Space, which the trim removes
        ("a,b\n\u2003x,y\n", True),  # EM SPACE
        ("a,b\n,\n", False),  # empty fields are not padded
        ("a\tb\n\tx\n", False),  # tab-delimited: an empty first field, not a tab of padding
        ('a,b\n"x",y\n', True),  # quoted fields are not looked into: trimmed, to be safe
    ],
)
def test_padding_is_seen_at_field_edges(text: str, padded: bool) -> None:
    delimiter = "\t" if "\t" in text else ","
    shape = _shape(text, delimiter)
    assert shape is not None and shape.padded is padded


@pytest.mark.parametrize("piece", [3, 1 << 19])
def test_values_of_lines_called_unpadded_are_unchanged_by_the_trim(piece: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The split skips polars' trim when the check calls a file unpadded: then trimming must change no field
    (decided by polars' own strip_chars on the csv module's fields), for any delimiter and piece size."""
    monkeypatch.setattr(tabular, "_PIECE_BYTES", piece)
    rng = random.Random(3)
    unpadded = 0
    for delimiter in (",", "\t", ";"):
        alphabet = ["a", "é", delimiter, delimiter, "\n", "\n", "\r\n", " ", "\t", "\u00a0", "\u2003", "\u3000", "x"]
        for _ in range(3000):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
            shape = _shape(text, delimiter)
            if shape is None or shape.padded:
                continue
            unpadded += 1
            fields = [f for row in csv.reader(io.StringIO(text), delimiter=delimiter) for f in row]
            assert pl.Series(fields, dtype=pl.String).str.strip_chars().to_list() == fields, repr(text)
    assert unpadded > 100
