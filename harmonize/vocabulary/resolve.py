"""Source code -> standard concept, in the site database's own vocabulary.

Resolution is one SQL statement over the distinct codes (staged as a table), so
it runs where the vocabulary lives and scales to millions of codes; polars only
joins the answer back onto the caller's rows.

Rules, in order (OHDSI conventions):

1. a valid row of the site's ``source_to_concept_map`` for (vocabulary, code) wins;
2. otherwise the source concept's valid ``Maps to`` relationships, one output row per target;
3. otherwise a standard source concept (``standard_concept = 'S'``) stands for itself;
4. otherwise the code is unmapped: ``concept_id`` 0.
"""

from __future__ import annotations

import polars as pl

from fedomop.harmonize.cdm.schema import create_cdm
from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.errors import VocabularyError
from fedomop.harmonize.vocabulary.cdm_io import staging_table

KEY_COLUMNS = ("vocabulary_id", "source_code")
ADDED_COLUMNS: dict[str, pl.DataType] = {
    "source_concept_id": pl.Int64(),
    "concept_id": pl.Int64(),
    "domain_id": pl.String(),
    "concept_name": pl.String(),
    "mapped_via": pl.String(),
}
MAPPED_VIA_SITE = "source_to_concept_map"
MAPPED_VIA_VOCABULARY = "maps_to"

_RESOLVE_SQL = """
WITH codes AS (
    SELECT DISTINCT vocabulary_id, source_code FROM "{codes}"
),
src AS (
    SELECT vocabulary_id, source_code, concept_id, standard_concept FROM (
        SELECT k.vocabulary_id, k.source_code, c.concept_id, c.standard_concept,
               ROW_NUMBER() OVER (
                   PARTITION BY k.vocabulary_id, k.source_code
                   ORDER BY CASE WHEN c.invalid_reason IS NULL THEN 0 ELSE 1 END, c.concept_id
               ) AS pick
        FROM codes k
        JOIN concept c ON c.vocabulary_id = k.vocabulary_id AND c.concept_code = k.source_code
    ) ranked
    WHERE pick = 1
),
site_rows AS (
    SELECT m.source_vocabulary_id AS vocabulary_id, m.source_code, m.source_concept_id, m.target_concept_id
    FROM source_to_concept_map m
    JOIN codes k ON m.source_vocabulary_id = k.vocabulary_id AND m.source_code = k.source_code
    WHERE m.invalid_reason IS NULL
),
site_source AS (
    SELECT vocabulary_id, source_code, MAX(source_concept_id) AS source_concept_id
    FROM site_rows GROUP BY vocabulary_id, source_code
),
maps_to AS (
    SELECT DISTINCT s.vocabulary_id, s.source_code, r.concept_id_2 AS target
    FROM src s
    JOIN concept_relationship r ON r.concept_id_1 = s.concept_id
    JOIN concept t ON t.concept_id = r.concept_id_2
    WHERE r.relationship_id = 'Maps to' AND r.invalid_reason IS NULL
),
vocabulary_map AS (
    SELECT vocabulary_id, source_code, target FROM maps_to
    UNION ALL
    SELECT s.vocabulary_id, s.source_code, s.concept_id FROM src s
    WHERE s.standard_concept = 'S' AND NOT EXISTS (
        SELECT 1 FROM maps_to m WHERE m.vocabulary_id = s.vocabulary_id AND m.source_code = s.source_code
    )
),
chosen AS (
    SELECT DISTINCT vocabulary_id, source_code, target_concept_id AS target, '{site}' AS mapped_via FROM site_rows
    UNION ALL
    SELECT v.vocabulary_id, v.source_code, v.target, '{vocabulary}' FROM vocabulary_map v
    WHERE NOT EXISTS (
        SELECT 1 FROM site_rows x WHERE x.vocabulary_id = v.vocabulary_id AND x.source_code = v.source_code
    )
)
SELECT k.vocabulary_id, k.source_code,
       COALESCE(s.concept_id, ss.source_concept_id, 0) AS source_concept_id,
       COALESCE(ch.target, 0) AS concept_id,
       t.domain_id, t.concept_name, ch.mapped_via
FROM codes k
LEFT JOIN src s ON s.vocabulary_id = k.vocabulary_id AND s.source_code = k.source_code
LEFT JOIN site_source ss ON ss.vocabulary_id = k.vocabulary_id AND ss.source_code = k.source_code
LEFT JOIN chosen ch ON ch.vocabulary_id = k.vocabulary_id AND ch.source_code = k.source_code
LEFT JOIN concept t ON t.concept_id = ch.target AND ch.target <> 0
"""


def _check_input(codes: pl.DataFrame) -> None:
    missing = [c for c in KEY_COLUMNS if c not in codes.columns]
    if missing:
        raise VocabularyError(
            f"codes to resolve lack column(s) {missing}",
            where="resolve_codes input",
            fix="give a frame with vocabulary_id and source_code columns",
        )
    clash = [c for c in ADDED_COLUMNS if c in codes.columns]
    if clash:
        raise VocabularyError(
            f"codes to resolve already have column(s) {clash}, which resolution adds",
            where="resolve_codes input",
            fix="rename or drop those columns before resolving",
        )


def require_vocabulary(db: Database) -> None:
    """Fail clearly when no vocabulary is loaded; make sure the (possibly empty) tables resolution reads exist."""
    if not db.has_table("concept") or db.scalar("SELECT COUNT(*) FROM concept") == 0:
        raise VocabularyError(
            "the database has no vocabulary (CONCEPT is missing or empty)",
            where=f"{db!r}",
            fix="load one first: fedomop vocab load --db URL --folder VOCABULARY_FOLDER",
        )
    create_cdm(db.engine, tables=["concept_relationship", "concept_ancestor", "source_to_concept_map"])


def _resolve_distinct(db: Database, keys: pl.DataFrame) -> pl.DataFrame:
    """Run the resolution SQL on distinct (vocabulary_id, source_code) pairs staged in the database."""
    schema = {"vocabulary_id": pl.String(), "source_code": pl.String(), **ADDED_COLUMNS}
    if keys.is_empty():
        return pl.DataFrame(schema=schema)
    with staging_table(db, "codes", columns="vocabulary_id VARCHAR, source_code VARCHAR") as stage:
        db.load_arrow(stage, keys)
        answer = db.query(_RESOLVE_SQL.format(codes=stage, site=MAPPED_VIA_SITE, vocabulary=MAPPED_VIA_VOCABULARY))
    return answer.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


class ResolutionCache:
    """Answers already resolved in this run, so a site mapped in chunks asks the vocabulary once per code."""

    def __init__(self) -> None:
        self.answers: pl.DataFrame | None = None

    def resolve(self, db: Database, keys: pl.DataFrame) -> pl.DataFrame:
        """The answer rows for ``keys`` (distinct vocabulary_id, source_code), querying only new ones."""
        if self.answers is None:
            require_vocabulary(db)
            self.answers = _resolve_distinct(db, keys.clear())  # no keys: the empty answer, without a query
        new = keys.join(self.answers.select(KEY_COLUMNS), on=list(KEY_COLUMNS), how="anti")
        if new.height:
            self.answers = pl.concat([self.answers, _resolve_distinct(db, new)])
        return self.answers


def resolve_codes(db: Database, codes: pl.DataFrame, *, cache: ResolutionCache | None = None) -> pl.DataFrame:
    """Add source_concept_id, concept_id, domain_id, concept_name and mapped_via to each (vocabulary_id, source_code).

    Other columns pass through; input order is kept; a code with several "Maps to" targets yields one row per
    target. Unknown codes get source_concept_id 0; unmapped codes concept_id 0 and null domain/name/mapped_via
    (except a site map row whose target is 0: concept_id 0 with mapped_via "source_to_concept_map", the site's
    explicit "no standard concept").
    """
    _check_input(codes)
    cache = cache if cache is not None else ResolutionCache()
    keyed = codes.with_columns(pl.col(c).cast(pl.String).alias(f"__fedomop_{c}") for c in KEY_COLUMNS)
    keys = keyed.select(pl.col(f"__fedomop_{c}").alias(c) for c in KEY_COLUMNS).drop_nulls().unique()
    answer = cache.resolve(db, keys).sort(*KEY_COLUMNS, "concept_id").rename({c: f"__fedomop_{c}" for c in KEY_COLUMNS})
    on = [f"__fedomop_{c}" for c in KEY_COLUMNS]
    # the usual case: each code has one answer row, so only the key columns go through the join and the answers
    # are added beside the input (joining the whole input gathered every column of millions of rows)
    found = keyed.select(on).join(answer, on=on, how="left", maintain_order="left")
    if found.height == keyed.height:
        joined = keyed.with_columns(found.drop(on).get_columns())
    else:  # a code with several targets: one row per target, in concept_id order, input order kept
        joined = keyed.join(answer, on=on, how="left", maintain_order="left_right")
    return joined.with_columns(pl.col("source_concept_id", "concept_id").fill_null(0)).drop(*on)


def standard_concept_by_code(db: Database, vocabulary_id: str, concept_code: str) -> int:
    """The concept_id of the valid standard concept with this code (studies and checks name concepts by code)."""
    require_vocabulary(db)
    found = db.query(
        "SELECT concept_id, standard_concept, invalid_reason FROM concept "
        "WHERE vocabulary_id = :vocabulary AND concept_code = :code",
        {"vocabulary": vocabulary_id, "code": concept_code},
    )
    standard = found.filter((pl.col("standard_concept") == "S") & pl.col("invalid_reason").is_null())
    if not standard.is_empty():
        return int(standard.select(pl.col("concept_id").min()).item())
    if found.is_empty():
        raise VocabularyError(
            f"no concept {vocabulary_id} {concept_code!r} in the CONCEPT table",
            where=f"{db!r}",
            fix="load a vocabulary that contains it (fedomop vocab load) or check the code",
        )
    raise VocabularyError(
        f"{vocabulary_id} {concept_code!r} (concept {found.item(0, 'concept_id')}) is not a valid standard concept",
        where=f"{db!r}",
        fix=f"name the standard concept it maps to (fedomop vocab resolve --vocabulary {vocabulary_id} "
        f"--code {concept_code})",
    )


def descendants(db: Database, concept_ids: list[int]) -> list[int]:
    """The concepts and all their descendants (concept_ancestor), sorted, each once."""
    ids = sorted({int(i) for i in concept_ids})
    if not ids:
        return []
    require_vocabulary(db)
    listed = ", ".join(str(i) for i in ids)
    found = db.query(
        f"SELECT DISTINCT descendant_concept_id AS concept_id FROM concept_ancestor "
        f"WHERE ancestor_concept_id IN ({listed})"
    )
    below = found.get_column("concept_id").cast(pl.Int64).to_list() if not found.is_empty() else []
    return sorted(set(ids) | set(below))
