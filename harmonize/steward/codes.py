"""Review unmapped source codes and turn the steward's decisions into a source_to_concept_map (Usagi's loop).

``review`` reads a mapped site database (after ``fedomop map``): every event row whose concept is 0 is an
unmapped source code. Candidates come from the site's own vocabulary, best evidence first: the same code in
another vocabulary (a LOINC column that carries SNOMED codes), then standard concepts whose name is close to the
code's own concept name, in the table's domain. Name similarity uses the standard library's difflib (rapidfuzz
is not a dependency); it compares against the standard concepts of one domain, which is fine for site
vocabularies and slow for a full Athena download (minutes for 100k codes).

The edited sheet is turned into the site's source_to_concept_map by :mod:`.apply`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.mapping.models import Mapping
from fedomop.harmonize.run.coverage import EVENT_TABLES, code_counts, rule_vocabularies

CANDIDATES = 3
REVIEW_COLUMNS = [
    "omop_table", "source_vocabulary_id", "source_code", "source_name", "records",
    "decision", "target_concept_id", "target_concept_name",
    *[f"candidate_{i}_{part}" for i in range(1, CANDIDATES + 1) for part in ("id", "name", "why")],
    "local_name", "local_domain",
]  # fmt: skip


def unmapped_codes(db: Database, mapping: Mapping) -> pl.DataFrame:
    """Every distinct (table, source vocabulary, code) loaded with concept 0, with its count of such records."""
    vocabularies = rule_vocabularies(mapping)
    fallback = pl.col("omop_table").replace_strict(vocabularies, default=None, return_dtype=pl.String)
    codes = code_counts(db).filter((pl.col("unmapped") > 0) & pl.col("source_code").is_not_null())
    return codes.select(
        "omop_table",
        pl.coalesce("source_vocabulary_id", fallback).alias("source_vocabulary_id"),
        "source_code",
        "source_name",
        pl.col("unmapped").alias("records"),
    ).sort(["records", "omop_table", "source_code"], descending=[True, False, False])


@dataclass(frozen=True)
class Candidate:
    concept_id: int
    name: str
    why: str


def _standard(db: Database) -> pl.DataFrame:
    return db.query(
        "SELECT concept_id, concept_name, domain_id, vocabulary_id, concept_code FROM concept "
        "WHERE standard_concept = 'S' AND invalid_reason IS NULL"
    )


def candidates_for(
    code: str, name: str | None, vocabulary: str | None, domain: str, standard: pl.DataFrame
) -> list[Candidate]:
    """Ranked candidates: the same code as a standard concept of another vocabulary, then close names in the domain."""
    found: list[Candidate] = []
    same_code = standard.filter((pl.col("concept_code") == code) & (pl.col("vocabulary_id") != (vocabulary or "")))
    for row in same_code.sort("concept_id").iter_rows(named=True):
        found.append(Candidate(row["concept_id"], row["concept_name"], f"same code in {row['vocabulary_id']}"))
    if name:
        in_domain = standard.filter(pl.col("domain_id") == domain)
        names = in_domain["concept_name"].to_list()
        ids = in_domain["concept_id"].to_list()
        lowered = [n.lower() for n in names]
        for match in difflib.get_close_matches(name.lower(), lowered, n=CANDIDATES, cutoff=0.6):
            index = lowered.index(match)
            score = difflib.SequenceMatcher(None, name.lower(), match).ratio()
            found.append(Candidate(int(ids[index]), names[index], f"name {score:.0%} similar"))
    unique: dict[int, Candidate] = {}
    for candidate in found:
        unique.setdefault(candidate.concept_id, candidate)
    return list(unique.values())[:CANDIDATES]


_LABEL = re.compile(r"label|libelle|description|desc$|_desc|name$|display|text$|bezeichnung", re.I)


def _code_and_label(path: Path, delimiter: str, encoding: str, code: str) -> pl.DataFrame | None:
    """First label per code in one file, or None when the file has no label column (read in the file's encoding)."""
    python_encoding = {"utf-8": "utf8", "utf8": "utf8"}.get(encoding, encoding.replace("-", ""))
    header = pl.read_csv(path, separator=delimiter, n_rows=0, encoding=python_encoding).columns
    label = next((n for n in header if _LABEL.search(n) and n != code), None)
    if label is None or code not in header:
        return None
    frame = pl.read_csv(path, separator=delimiter, columns=[code, label], infer_schema=False, encoding=python_encoding)
    frame = frame.rename({code: "source_code", label: "label"}).drop_nulls()
    return frame.unique(subset="source_code", keep="first", maintain_order=True)


def source_labels(mapping: Mapping, source_dir: Path) -> pl.DataFrame:
    """(source_vocabulary_id, source_code, label) from the extract: the label column next to each code column.

    Local codes have no concept, hence no name to compare with; the extract usually carries one (``LIBELLE``,
    ``description``), found by its column name in the rule's tabular source.
    """
    frames = []
    for rules in mapping.tables.values():
        for rule in rules:
            source = mapping.sources.get(rule.source)
            if rule.concept is None or not rule.concept.vocabulary or source is None or source.format != "csv":
                continue
            for path in sorted(Path(source_dir).glob(source.files)):
                frame = _code_and_label(path, source.delimiter, source.encoding, rule.concept.code)
                if frame is not None:
                    frames.append(frame.with_columns(pl.lit(rule.concept.vocabulary).alias("source_vocabulary_id")))
    if not frames:
        return pl.DataFrame(schema={"source_code": pl.String, "label": pl.String, "source_vocabulary_id": pl.String})
    return pl.concat(frames).unique(subset=["source_vocabulary_id", "source_code"], keep="first")


def review_codes(db: Database, mapping: Mapping, source_dir: Path | None = None) -> pl.DataFrame:
    """The review sheet: one row per unmapped code, the best candidate pre-filled as target (decision left blank).

    With ``source_dir``, a code the vocabulary does not name takes its label from the extract.
    """
    codes = unmapped_codes(db, mapping)
    if source_dir is not None:
        labels = source_labels(mapping, source_dir)
        codes = (
            codes.join(labels, on=["source_vocabulary_id", "source_code"], how="left")
            .with_columns(pl.coalesce("source_name", "label").alias("source_name"))
            .drop("label")
        )
    standard = _standard(db)
    rows = []
    for row in codes.iter_rows(named=True):
        domain = EVENT_TABLES[row["omop_table"]][1]
        found = candidates_for(row["source_code"], row["source_name"], row["source_vocabulary_id"], domain, standard)
        out = {**row, "decision": "", "local_name": row["source_name"] or "", "local_domain": domain}
        out["target_concept_id"] = found[0].concept_id if found else None
        out["target_concept_name"] = found[0].name if found else ""
        for i in range(CANDIDATES):
            pick = found[i] if i < len(found) else None
            out[f"candidate_{i + 1}_id"] = pick.concept_id if pick else None
            out[f"candidate_{i + 1}_name"] = pick.name if pick else ""
            out[f"candidate_{i + 1}_why"] = pick.why if pick else ""
        rows.append(out)
    schema = {c: pl.String for c in REVIEW_COLUMNS} | {"records": pl.Int64, "target_concept_id": pl.Int64}
    schema |= {f"candidate_{i}_id": pl.Int64 for i in range(1, CANDIDATES + 1)}
    return pl.DataFrame(rows, schema=schema).select(REVIEW_COLUMNS)
