"""A synthetic vocabulary with the table sizes and shapes of a full Athena download, for load and lookup timings.

A real site loads the whole Athena release: about 6.5M concepts, 45M CONCEPT_RELATIONSHIP rows and 75M
CONCEPT_ANCESTOR rows (``--scale 1``; ``--scale 0.1`` writes a tenth). The sample subset's real concepts
(``sample_data/vocabulary``) are written first, unchanged, so ``fedomop map`` of the sample sites resolves exactly
as before; the synthetic rows come after them, with ids from 1,100,000,000 (no clash with released ids, below the
local-concept floor of 2,000,000,000) and Athena's shapes:

- CONCEPT: domains and vocabularies in roughly Athena's proportions (Drug/RxNorm Extension the largest), a code
  unique within its vocabulary, names of 20-80 characters, about half standard, YYYYMMDD dates;
- CONCEPT_RELATIONSHIP: every relationship stored in both directions ("Maps to"/"Mapped from", "Is a"/"Subsumes",
  ...), as Athena does, each concept with several partners;
- CONCEPT_ANCESTOR: one self row per standard concept (levels 0) and ancestor rows up a synthetic hierarchy;
- the small tables (VOCABULARY, DOMAIN, CONCEPT_CLASS, RELATIONSHIP) copied from the subset.

Files are tab-separated as Athena ships them, written in blocks, so memory stays flat whatever ``--scale``.

    python benchmarks/gen_athena_vocabulary.py --out /tmp/athena --scale 0.1
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
SUBSET = REPO / "sample_data" / "vocabulary"
ATHENA = {"concept": 6_500_000, "concept_relationship": 45_000_000, "concept_ancestor": 75_000_000}
FIRST_ID = 1_100_000_000
BLOCK = 2_000_000
# (domain, vocabulary, concept class, share of concepts): a coarse picture of an Athena release
SHAPES = [
    ("Drug", "RxNorm Extension", "Clinical Drug", 0.40),
    ("Drug", "RxNorm", "Clinical Drug", 0.05),
    ("Condition", "SNOMED", "Clinical Finding", 0.12),
    ("Observation", "SNOMED", "Observable Entity", 0.10),
    ("Measurement", "LOINC", "Lab Test", 0.10),
    ("Procedure", "SNOMED", "Procedure", 0.08),
    ("Condition", "ICD10CM", "5-char billing code", 0.05),
    ("Procedure", "CPT4", "CPT4", 0.04),
    ("Device", "SNOMED", "Physical Object", 0.03),
    ("Observation", "ICD10CM", "4-char billing code", 0.03),
]
PAIRS = [("Maps to", "Mapped from", 0.25), ("Is a", "Subsumes", 0.45), ("RxNorm has ing", "RxNorm ing of", 0.30)]


def _header(table: str) -> list[str]:
    return (SUBSET / f"{table.upper()}.csv").read_text(encoding="utf-8").splitlines()[0].split("\t")


def _append(path: Path, frame: pl.DataFrame) -> None:
    with path.open("ab") as handle:
        frame.write_csv(handle, separator="\t", include_header=False, null_value="", quote_style="never")


def _start(path: Path, table: str) -> None:
    """The subset's rows first (header included), unchanged."""
    shutil.copyfile(SUBSET / f"{table.upper()}.csv", path)
    if not path.read_bytes().endswith(b"\n"):
        with path.open("ab") as handle:
            handle.write(b"\n")


def _concepts(start: int, count: int, rng: np.random.Generator) -> pl.DataFrame:
    ids = np.arange(start, start + count, dtype=np.int64)
    shares = np.array([s for *_, s in SHAPES])
    shape = rng.choice(len(SHAPES), size=count, p=shares / shares.sum())
    words = np.array(["acute", "chronic", "oral", "tablet", "injection", "serum", "left", "right", "disorder",
                      "of", "with", "mg", "solution", "mass", "volume", "procedure", "finding", "upper", "lower"])  # fmt: skip
    name_words = rng.integers(3, 10, size=count)
    picks = rng.integers(0, len(words), size=(count, 9))
    names = [" ".join(words[picks[i, : name_words[i]]]) for i in range(count)]
    standard = rng.random(count)
    return pl.DataFrame(
        {
            "concept_id": ids,
            "concept_name": names,
            "domain_id": [SHAPES[k][0] for k in shape],
            "vocabulary_id": [SHAPES[k][1] for k in shape],
            "concept_class_id": [SHAPES[k][2] for k in shape],
            "standard_concept": standard,
            "concept_code": [f"X{i}" for i in ids],
            "valid_start_date": ["19700101"] * count,
            "valid_end_date": ["20991231"] * count,
            "invalid_reason": rng.random(count),
        }
    ).with_columns(
        pl.when(pl.col("standard_concept") < 0.5)
        .then(pl.lit("S"))
        .when(pl.col("standard_concept") < 0.55)
        .then(pl.lit("C"))
        .otherwise(pl.lit(None, pl.String))
        .alias("standard_concept"),
        pl.when(pl.col("invalid_reason") < 0.03)
        .then(pl.lit("U"))
        .otherwise(pl.lit(None, pl.String))
        .alias("invalid_reason"),
    )


def _relationships(start: int, count: int, concepts: int, rng: np.random.Generator) -> pl.DataFrame:
    """``count`` rows: half pairs, half their reverse (Athena stores both directions)."""
    pairs = count // 2
    first = FIRST_ID + (np.arange(start, start + pairs, dtype=np.int64) % concepts)
    second = FIRST_ID + rng.integers(0, concepts, size=pairs, dtype=np.int64)
    kind = rng.choice(len(PAIRS), size=pairs, p=[s for *_, s in PAIRS])
    forward = np.array([p[0] for p in PAIRS])[kind]
    backward = np.array([p[1] for p in PAIRS])[kind]
    both = {
        "concept_id_1": np.concatenate([first, second]),
        "concept_id_2": np.concatenate([second, first]),
        "relationship_id": np.concatenate([forward, backward]),
    }
    frame = pl.DataFrame(both)
    return frame.with_columns(
        pl.lit("19700101").alias("valid_start_date"),
        pl.lit("20991231").alias("valid_end_date"),
        pl.lit(None, pl.String).alias("invalid_reason"),
    )


def _ancestors(start: int, count: int, concepts: int) -> pl.DataFrame:
    """Descendant d has ancestors d // 2, d // 4, ... (a binary hierarchy) plus itself at level 0."""
    rows = np.arange(start, start + count, dtype=np.int64)
    depth = 12  # 1 self row + 11 ancestors per descendant
    descendant = rows // depth
    level = rows % depth
    ancestor = descendant >> level
    return pl.DataFrame(
        {
            "ancestor_concept_id": FIRST_ID + (ancestor % concepts),
            "descendant_concept_id": FIRST_ID + (descendant % concepts),
            "min_levels_of_separation": level,
            "max_levels_of_separation": level + (level > 2),
        }
    )


def generate(out: Path, scale: float, seed: int = 18) -> dict[str, int]:
    """Write the vocabulary folder; returns rows written per table (synthetic rows plus the subset's)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = {table: int(rows * scale) for table, rows in ATHENA.items()}
    for small in ("vocabulary", "domain", "concept_class", "relationship"):
        shutil.copyfile(SUBSET / f"{small.upper()}.csv", out / f"{small.upper()}.csv")
    builders = {
        "concept": lambda s, n: _concepts(FIRST_ID + s, n, rng),
        "concept_relationship": lambda s, n: _relationships(s, n, sizes["concept"], rng),
        "concept_ancestor": lambda s, n: _ancestors(s, n, sizes["concept"]),
    }
    for table, rows in sizes.items():
        path = out / f"{table.upper()}.csv"
        _start(path, table)
        for block in range(0, rows, BLOCK):
            frame = builders[table](block, min(BLOCK, rows - block))
            _append(path, frame.select(_header(table)))
    extra = {"VOCABULARY": 0, "DOMAIN": 0, "CONCEPT_CLASS": 0, "RELATIONSHIP": 0}
    written = {t: sizes.get(t, 0) + _subset_rows(t) for t in (*sizes, *(e.lower() for e in extra))}
    return written


def _subset_rows(table: str) -> int:
    return len((SUBSET / f"{table.upper()}.csv").read_text(encoding="utf-8").splitlines()) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="1 = Athena's sizes (6.5M / 45M / 75M rows)")
    args = parser.parse_args()
    started = time.perf_counter()
    written = generate(args.out, args.scale)
    size = sum(p.stat().st_size for p in args.out.iterdir()) / 2**20
    print(", ".join(f"{t} {n:,}" for t, n in written.items()))
    print(f"{size:,.0f} MiB in {time.perf_counter() - started:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
