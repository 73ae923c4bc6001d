"""Guess which code system a column's values come from.

The loaded vocabulary decides first (the share of distinct values that are a concept_code of each vocabulary),
because numeric codes are ambiguous by shape alone: an RxNorm CUI and a short SNOMED id look alike. Without a
vocabulary, or when it knows too few of the values, the shape decides: ICD-10-CM and ICD-9-CM have fixed
letter/digit layouts, a LOINC code ends in ``-<check digit>`` (mod-10), and a SNOMED CT id ends in a Verhoeff
check digit, which random numbers pass only one time in ten.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import polars as pl

MIN_SHARE = 0.8  # a system is named by shape when at least this share of distinct values fits it
VOCABULARY_SHARE = 0.6  # ... or by the vocabulary when at least this share are its concept codes
_ICD10CM = re.compile(r"^[A-TV-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")
_ICD9CM = re.compile(r"^(\d{3}(\.\d{1,2})?|V\d{2}(\.\d{1,2})?|E\d{3}(\.\d)?)$")
_LOINC = re.compile(r"^\d{1,7}-\d$")
_DIGITS = re.compile(r"^\d+$")

_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def verhoeff_valid(digits: str) -> bool:
    """True when the last digit is the Verhoeff check digit of the rest (SNOMED CT identifiers)."""
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(digit)]]
    return check == 0


def loinc_valid(code: str) -> bool:
    """LOINC's mod-10 check digit (the Luhn variant LOINC publishes) over the part before the dash."""
    body, _, check = code.partition("-")
    total = 0
    for position, digit in enumerate(reversed(body)):
        value = int(digit) * (2 if position % 2 == 0 else 1)
        total += value // 10 + value % 10
    return (10 - total % 10) % 10 == int(check)


def _snomed(code: str) -> bool:
    return bool(_DIGITS.match(code)) and 6 <= len(code) <= 18 and verhoeff_valid(code)


def _loinc(code: str) -> bool:
    return bool(_LOINC.match(code)) and loinc_valid(code)


_SHAPES: dict[str, Callable[[str], bool]] = {
    "LOINC": _loinc,
    "ICD10CM": lambda c: bool(_ICD10CM.match(c)) and not c.isdigit(),
    "ICD9CM": lambda c: bool(_ICD9CM.match(c)) and not c.isdigit(),  # bare 3-digit numbers are too common
    "SNOMED": _snomed,
}


def _by_vocabulary(values: Sequence[str], concepts: pl.DataFrame) -> tuple[str | None, float]:
    codes = pl.DataFrame({"concept_code": list(values)}, schema={"concept_code": pl.String})
    hits = (
        concepts.select("concept_code", "vocabulary_id")
        .unique()
        .join(codes, on="concept_code", how="inner")
        .group_by("vocabulary_id")
        .len()
        .sort(["len", "vocabulary_id"], descending=[True, False])
    )
    if hits.is_empty():
        return None, 0.0
    vocabulary, count = hits.row(0)
    return str(vocabulary), count / len(values)


def _by_shape(values: Sequence[str]) -> tuple[str | None, float]:
    best: tuple[str | None, float] = (None, 0.0)
    for system, fits in _SHAPES.items():
        share = sum(1 for v in values if fits(v)) / len(values)
        if share > best[1]:
            best = (system, share)
    return best


def guess_code_system(values: Sequence[str], concepts: pl.DataFrame | None = None) -> tuple[str | None, float | None]:
    """(system, share of distinct values that fit it) for a column's distinct values, or (None, None).

    Free text and numbers that fit no system give None; codes of a recognisable shape that the vocabulary does not
    know are still named by shape.
    """
    cleaned = [v.strip() for v in values if v and v.strip()]
    if not cleaned or any(" " in v for v in cleaned[:200]):
        return None, None
    if concepts is not None:
        system, share = _by_vocabulary(cleaned, concepts)
        if system and share >= VOCABULARY_SHARE:
            return system, round(share, 4)
    system, share = _by_shape(cleaned)
    if system and share >= MIN_SHARE:
        return system, round(share, 4)
    return None, None


def code_domain(values: Sequence[str], system: str, concepts: pl.DataFrame) -> str | None:
    """The most frequent domain of the column's codes in ``system`` (which table their events belong in)."""
    codes = pl.DataFrame({"concept_code": [v.strip() for v in values if v]}, schema={"concept_code": pl.String})
    domains = (
        concepts.filter(pl.col("vocabulary_id") == system)
        .join(codes, on="concept_code", how="inner")
        .group_by("domain_id")
        .len()
        .sort(["len", "domain_id"], descending=[True, False])
    )
    return None if domains.is_empty() else str(domains.item(0, "domain_id"))
