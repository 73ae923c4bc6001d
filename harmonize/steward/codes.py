"""Review unmapped source codes and turn the steward's decisions into a source_to_concept_map (Usagi's loop).

``review`` reads a mapped site database (after ``fedomop map``): every event row whose concept is 0 is an
unmapped source code. Candidates come from the site's own vocabulary, best evidence first: the same code in
another vocabulary (a LOINC column that carries SNOMED codes), then standard concepts whose name is close to the
code's own concept name, in the table's domain. Name similarity uses the standard library's difflib (rapidfuzz
is not a dependency); it compares against the standard concepts of one domain, which is fine for site
vocabularies and slow for a full Athena download (minutes for 100k codes).

``apply`` reads the edited review CSV back: ``approve`` rows become source_to_concept_map rows; ``local`` rows
get a local concept (OMOP reserves ids above 2,000,000,000 for site concepts) written to a site vocabulary
extension, and a source_to_concept_map row pointing at it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.errors import MappingError, VocabularyError
from fedomop.harmonize.mapping.models import Mapping

LOCAL_CONCEPT_START = 2_000_000_001
CANDIDATES = 3
EVENT_TABLES = {
    "condition_occurrence": ("condition", "Condition"),
    "procedure_occurrence": ("procedure", "Procedure"),
    "drug_exposure": ("drug", "Drug"),
    "measurement": ("measurement", "Measurement"),
    "observation": ("observation", "Observation"),
    "device_exposure": ("device", "Device"),
}
DECISIONS = ("", "approve", "local", "skip")
REVIEW_COLUMNS = [
    "omop_table", "source_vocabulary_id", "source_code", "source_name", "records",
    "decision", "target_concept_id", "target_concept_name",
    *[f"candidate_{i}_{part}" for i in range(1, CANDIDATES + 1) for part in ("id", "name", "why")],
    "local_name", "local_domain",
]  # fmt: skip


def rule_vocabularies(mapping: Mapping) -> dict[str, str]:
    """Table -> the fixed source vocabulary of its coded rules ("ICD10CM or SNOMED" when they differ).

    Used for codes the vocabulary does not know (source concept 0), whose vocabulary the database cannot tell.
    """
    found: dict[str, set[str]] = {}
    for table, rules in mapping.tables.items():
        for rule in rules:
            if rule.concept is not None and rule.concept.vocabulary:
                found.setdefault(table, set()).add(rule.concept.vocabulary)
    return {table: " or ".join(sorted(v)) for table, v in found.items()}


def event_tables(db: Database) -> list[tuple[str, str]]:
    """(table, column prefix) of the event tables the database has."""
    present = set(db.query("SELECT table_name FROM information_schema.tables")["table_name"].to_list())
    return [(table, prefix) for table, (prefix, _domain) in EVENT_TABLES.items() if table in present]


def unmapped_codes(db: Database, mapping: Mapping) -> pl.DataFrame:
    """Every distinct (table, source vocabulary, code) loaded with concept 0, with its record count."""
    vocabularies = rule_vocabularies(mapping)
    frames = []
    for table, prefix in event_tables(db):
        frame = db.query(
            f"SELECT {prefix}_source_value AS source_code, MAX(c.vocabulary_id) AS concept_vocabulary, "
            f"MAX(c.concept_name) AS source_name, COUNT(*) AS records FROM {table} t "
            f"LEFT JOIN concept c ON c.concept_id = t.{prefix}_source_concept_id AND c.concept_id <> 0 "
            f"WHERE t.{prefix}_concept_id = 0 AND t.{prefix}_source_value IS NOT NULL GROUP BY 1"
        )
        frames.append(
            frame.with_columns(
                pl.lit(table).alias("omop_table"),
                pl.coalesce("concept_vocabulary", pl.lit(vocabularies.get(table))).alias("source_vocabulary_id"),
                pl.col("records").cast(pl.Int64),
            ).drop("concept_vocabulary")
        )
    if not frames:
        return pl.DataFrame(schema={"omop_table": pl.String, "source_vocabulary_id": pl.String,
                                    "source_code": pl.String, "source_name": pl.String, "records": pl.Int64})  # fmt: skip
    out = pl.concat(frames, how="diagonal_relaxed")
    return out.select("omop_table", "source_vocabulary_id", "source_code", "source_name", "records").sort(
        ["records", "omop_table", "source_code"], descending=[True, False, False]
    )


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


# -- apply -----------------------------------------------------------------------------------------------


@dataclass
class Applied:
    mapped: int  # source_to_concept_map rows to existing standard concepts
    local: int  # local concepts created
    skipped: int  # rows left undecided or skipped
    stcm: Path
    extension: Path | None


def _read_review(path: Path) -> pl.DataFrame:
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise MappingError(f"cannot read the review sheet: {exc}", where=str(path)) from None
    missing = [
        c for c in ("source_vocabulary_id", "source_code", "decision", "target_concept_id") if c not in frame.columns
    ]
    if missing:
        raise MappingError(
            f"not a review sheet: no column {missing[0]}", where=str(path), fix="use fedomop codes review's CSV"
        )
    return frame.with_columns(pl.col("decision").fill_null("").str.strip_chars().str.to_lowercase())


def _check_decisions(frame: pl.DataFrame, path: Path) -> None:
    for line, row in enumerate(frame.iter_rows(named=True), start=2):
        decision = row["decision"]
        if decision not in DECISIONS:
            raise MappingError(f"decision {decision!r} is not one of approve, local, skip (or blank)",
                               where=f"{path} line {line}, field decision", fix="correct the decision")  # fmt: skip
        if decision == "approve" and not (row["target_concept_id"] or "").strip().isdigit():
            raise MappingError("an approved row needs a target_concept_id",
                               where=f"{path} line {line}, field target_concept_id",
                               fix="copy a candidate_N_id, or choose decision local")  # fmt: skip
        if decision == "local" and not (row.get("local_name") or "").strip():
            raise MappingError("a local concept needs a local_name", where=f"{path} line {line}, field local_name",
                               fix="name the site's concept")  # fmt: skip


def _target_vocabularies(frame: pl.DataFrame, concepts: pl.DataFrame, path: Path) -> dict[int, str]:
    known = dict(concepts.select("concept_id", "vocabulary_id").iter_rows())
    found: dict[int, str] = {}
    for line, row in enumerate(frame.iter_rows(named=True), start=2):
        if row["decision"] != "approve":
            continue
        target = int(row["target_concept_id"])
        if target not in known:
            raise VocabularyError(f"target_concept_id {target} is not in the site vocabulary",
                                  where=f"{path} line {line}, field target_concept_id",
                                  fix="copy a candidate_N_id, or load the vocabulary that has it")  # fmt: skip
        found[target] = str(known[target])
    return found


def _next_local_id(extension: Path) -> int:
    concept = extension / "CONCEPT.csv"
    if not concept.exists():
        return LOCAL_CONCEPT_START
    existing = pl.read_csv(concept, separator="\t", infer_schema=False)["concept_id"].cast(pl.Int64)
    top = existing.max()  # None for an extension without concepts yet
    return max(LOCAL_CONCEPT_START, (top if isinstance(top, int) else 0) + 1)


def apply_review(
    review: Path, stcm: Path, *, concepts: pl.DataFrame, extension: Path | None = None, site: str = "site"
) -> Applied:
    """Write the approved/local decisions of a review sheet as a source_to_concept_map CSV (and extension).

    ``concepts`` is the site vocabulary's CONCEPT table: an approved target must be in it (its vocabulary_id is
    copied into the map), so a typo in a concept id fails here, with its line, not at the next run.
    """
    frame = _read_review(Path(review))
    _check_decisions(frame, Path(review))
    vocabulary_of = _target_vocabularies(frame, concepts, Path(review))
    local = frame.filter(pl.col("decision") == "local")
    if local.height and extension is None:
        raise MappingError("the sheet has local decisions but no extension folder was given",
                           where=str(review), fix="pass --extension FOLDER (the site's vocabulary extension)")  # fmt: skip
    local_rows: list[dict[str, object]] = []
    local_ids: dict[str, int] = {}  # source code -> its new local concept id
    if local.height and extension is not None:
        start = _next_local_id(extension)
        for offset, row in enumerate(local.iter_rows(named=True)):
            local_ids[row["source_code"]] = start + offset
            local_rows.append({
                "concept_id": start + offset, "concept_name": row["local_name"].strip(),
                "domain_id": (row.get("local_domain") or "Observation").strip(), "vocabulary_id": site,
                "concept_class_id": "Undefined", "standard_concept": "S", "concept_code": row["source_code"],
                "valid_start_date": "1970-01-01", "valid_end_date": "2099-12-31", "invalid_reason": None,
            })  # fmt: skip
        _write_extension(extension, local_rows)
    stcm_rows = []
    for row in frame.filter(pl.col("decision").is_in(["approve", "local"])).iter_rows(named=True):
        target = int(row["target_concept_id"]) if row["decision"] == "approve" else local_ids[row["source_code"]]
        stcm_rows.append({
            "source_code": row["source_code"], "source_concept_id": 0,
            "source_vocabulary_id": row["source_vocabulary_id"],
            "source_code_description": row.get("source_name") or "", "target_concept_id": target,
            "target_vocabulary_id": site if row["decision"] == "local" else vocabulary_of[target],
            "valid_start_date": "1970-01-01", "valid_end_date": "2099-12-31", "invalid_reason": None,
        })  # fmt: skip
    out = pl.DataFrame(stcm_rows, schema={k: (pl.Int64 if k.endswith("concept_id") else pl.String) for k in
                                          ("source_code", "source_concept_id", "source_vocabulary_id",
                                           "source_code_description", "target_concept_id", "target_vocabulary_id",
                                           "valid_start_date", "valid_end_date", "invalid_reason")})  # fmt: skip
    stcm.parent.mkdir(parents=True, exist_ok=True)
    out.write_csv(stcm)
    return Applied(
        mapped=frame.filter(pl.col("decision") == "approve").height,
        local=len(local_rows),
        skipped=frame.filter(~pl.col("decision").is_in(["approve", "local"])).height,
        stcm=stcm,
        extension=extension if local_rows else None,
    )


def _write_extension(extension: Path, rows: list[dict[str, object]]) -> None:
    """Append local concepts to the extension's CONCEPT.csv (tab-separated, Athena layout)."""
    extension.mkdir(parents=True, exist_ok=True)
    concept = extension / "CONCEPT.csv"
    frame = pl.DataFrame(rows, schema={k: pl.String for k in rows[0]})
    if concept.exists():
        frame = pl.concat([pl.read_csv(concept, separator="\t", infer_schema=False), frame], how="diagonal")
    frame.write_csv(concept, separator="\t")
    if any(int(str(r["concept_id"])) < LOCAL_CONCEPT_START for r in rows):
        raise VocabularyError("local concept ids must be above 2,000,000,000", where=str(concept))
