"""Build the small, real OMOP vocabulary subset shipped in ``sample_data/vocabulary``.

The subset is written in the Athena download format (tab-delimited, ``YYYYMMDD``
dates, no quoting) so the sample sites exercise the same loader as a real Athena
download. Concepts come from two places, both listed in ``concepts.yaml``:
rows copied verbatim from the Eunomia vocabulary shard, and a few concepts whose
ids were verified in public OHDSI material (each with its evidence). Nothing is
invented: a concept we could not verify is not in the subset.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from harmonize.errors import VocabularyError

CONCEPT_COLUMNS = (
    "concept_id",
    "concept_name",
    "domain_id",
    "vocabulary_id",
    "concept_class_id",
    "standard_concept",
    "concept_code",
    "valid_start_date",
    "valid_end_date",
    "invalid_reason",
)
RELATIONSHIP_COLUMNS = (
    "concept_id_1",
    "concept_id_2",
    "relationship_id",
    "valid_start_date",
    "valid_end_date",
    "invalid_reason",
)
ANCESTOR_COLUMNS = (
    "ancestor_concept_id",
    "descendant_concept_id",
    "min_levels_of_separation",
    "max_levels_of_separation",
)
_END_OF_TIME = "20991231"

# Reference rows of the small vocabulary tables, as published in the OHDSI/Athena test data
# (domain_concept_id, concept_class_concept_id, relationship_concept_id are real ids).
DOMAINS = {
    "Condition": 19,
    "Drug": 13,
    "Measurement": 21,
    "Procedure": 10,
    "Observation": 27,
    "Visit": 8,
    "Gender": 2,
    "Race": 3,
    "Ethnicity": 4,
    "Unit": 16,
    "Type Concept": 58,
    "Metadata": 7,
}
CONCEPT_CLASSES = {
    "Clinical Finding": ("Clinical Finding", 44818997),
    "Procedure": ("Procedure", 44819080),
    "Lab Test": ("Laboratory Class", 45754678),
    "Clinical Observation": ("Clinical Class", 45754679),
    "Clinical Drug": ("Semantic Clinical Drug", 44819028),
    "Quant Clinical Drug": ("Quantified Clinical Drug", 45754862),
    "Unit": ("Unit", 44819072),
    "Visit": ("OMOP Visit", 44819023),
    "Gender": ("Gender", 44819086),
    "Race": ("Race", 44819030),
    "Ethnicity": ("Ethnicity", 44819035),
    "Type Concept": ("Type Concept", 581453),
    "3-char billing code": ("3-character billing code", 46233663),
    "3-dig billing code": ("3-digit billing code", 45754868),
}
RELATIONSHIPS = (
    ("Is a", "Is a", "1", "0", "Subsumes", "44818821"),
    ("Subsumes", "Subsumes", "1", "1", "Is a", "44818723"),
    ("Maps to", "Non-standard to Standard map (OMOP)", "0", "0", "Mapped from", "44818977"),
    ("Mapped from", "Standard to Non-standard map (OMOP)", "0", "0", "Maps to", "44818976"),
)
VOCABULARY_NAMES = {
    "SNOMED": "Systematic Nomenclature of Medicine - Clinical Terms (IHTSDO)",
    "LOINC": "Logical Observation Identifiers Names and Codes (Regenstrief Institute)",
    "RxNorm": "RxNorm (NLM)",
    "UCUM": "Unified Code for Units of Measure (Regenstrief Institute)",
    "ICD10CM": "International Classification of Diseases, Tenth Revision, Clinical Modification (NCHS)",
    "ICD9CM": "International Classification of Diseases, Ninth Revision, Clinical Modification, Volume 1 and 2 (NCHS)",
    "Gender": "OMOP Gender",
    "Race": "Race and Ethnicity Code Set (USBC)",
    "Ethnicity": "OMOP Ethnicity",
    "Visit": "OMOP Visit",
    "Type Concept": "OMOP Type Concept",
}
SUBSET_VERSION = "fedomop sample subset (Eunomia Synthea27Nj v5.0 09-APR-22 shard + verified additions)"


@dataclass(frozen=True)
class Catalogue:
    """The parsed ``concepts.yaml``: which concepts to take and the hierarchy among them."""

    eunomia_ids: dict[int, str]
    external: list[dict]
    maps_to: list[dict]
    ancestors: list[tuple[int, int, int, int]]


def load_catalogue() -> Catalogue:
    """Read the concept catalogue packaged next to this module."""
    text = resources.files("harmonize.synthetic").joinpath("concepts.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return Catalogue(
        eunomia_ids={int(row["id"]): row["role"] for row in data["eunomia"]},
        external=data["external"],
        maps_to=data["maps_to"],
        ancestors=[tuple(int(x) for x in row) for row in data["ancestors"]],  # type: ignore[misc]
    )


def _athena_date(value: str) -> str:
    """Eunomia writes 1970-01-01; Athena writes 19700101."""
    return value.replace("-", "")


def _read_eunomia_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise VocabularyError(
            "Eunomia vocabulary file not found",
            where=str(path),
            fix="point --eunomia at shared/omop/eunomia-synthea27nj (or set FEDOMOP_SHARED)",
        )
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def eunomia_concepts(eunomia_dir: Path, wanted: set[int]) -> list[dict[str, str]]:
    """The wanted rows of Eunomia's CONCEPT.csv, in Athena form; every wanted id must be present."""
    rows = [r for r in _read_eunomia_rows(eunomia_dir / "CONCEPT.csv") if int(r["concept_id"]) in wanted]
    missing = wanted - {int(r["concept_id"]) for r in rows}
    if missing:
        raise VocabularyError(
            f"concepts {sorted(missing)} are not in the Eunomia shard",
            where=str(eunomia_dir / "CONCEPT.csv"),
            fix="move them to the 'external' list of concepts.yaml with their evidence, or drop them",
        )
    for row in rows:
        row["valid_start_date"] = _athena_date(row["valid_start_date"])
        row["valid_end_date"] = _athena_date(row["valid_end_date"])
    return rows


def external_concepts(catalogue: Catalogue) -> list[dict[str, str]]:
    """The verified non-Eunomia concepts, as CONCEPT rows."""
    return [
        {
            "concept_id": str(c["id"]),
            "concept_name": c["name"],
            "domain_id": c["domain"],
            "vocabulary_id": c["vocabulary"],
            "concept_class_id": c["class"],
            "standard_concept": c["standard"],
            "concept_code": str(c["code"]),
            "valid_start_date": c["start"],
            "valid_end_date": c["end"],
            "invalid_reason": "",
        }
        for c in catalogue.external
    ]


def eunomia_relationships(eunomia_dir: Path, ids: set[int]) -> list[tuple[str, ...]]:
    """Maps to / Mapped from / Is a / Subsumes rows of the shard whose both ends are in the subset."""
    kept = {"Maps to", "Mapped from", "Is a", "Subsumes"}
    rows = []
    for r in _read_eunomia_rows(eunomia_dir / "CONCEPT_RELATIONSHIP.csv"):
        if r["relationship_id"] in kept and int(r["concept_id_1"]) in ids and int(r["concept_id_2"]) in ids:
            rows.append(
                (
                    r["concept_id_1"],
                    r["concept_id_2"],
                    r["relationship_id"],
                    _athena_date(r["valid_start_date"]),
                    _athena_date(r["valid_end_date"]),
                    r["invalid_reason"] or "",
                )
            )
    return rows


def catalogue_relationships(catalogue: Catalogue, concepts: list[dict[str, str]]) -> list[tuple[str, ...]]:
    """Verified Maps to rows (with reverses), self Maps to for standard concepts, Is a/Subsumes for ancestors."""
    rows: list[tuple[str, ...]] = []
    for m in catalogue.maps_to:
        start = m["start"]
        rows.append((str(m["from"]), str(m["to"]), "Maps to", start, _END_OF_TIME, ""))
        rows.append((str(m["to"]), str(m["from"]), "Mapped from", start, _END_OF_TIME, ""))
    for c in concepts:
        if c["standard_concept"] == "S":
            rows.append((c["concept_id"], c["concept_id"], "Maps to", c["valid_start_date"], _END_OF_TIME, ""))
            rows.append((c["concept_id"], c["concept_id"], "Mapped from", c["valid_start_date"], _END_OF_TIME, ""))
    for ancestor, descendant, low, _high in catalogue.ancestors:
        if low == 1:
            rows.append((str(descendant), str(ancestor), "Is a", "19700101", _END_OF_TIME, ""))
            rows.append((str(ancestor), str(descendant), "Subsumes", "19700101", _END_OF_TIME, ""))
    return rows


def _merge_relationships(real: list[tuple[str, ...]], added: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """One row per (concept_id_1, concept_id_2, relationship_id); a row of the real shard wins."""
    merged: dict[tuple[str, str, str], tuple[str, ...]] = {}
    for row in [*real, *added]:
        merged.setdefault((row[0], row[1], row[2]), row)
    return sorted(merged.values(), key=lambda r: (int(r[0]), int(r[1]), r[2]))


def ancestor_closure(
    pairs: list[tuple[int, int, int, int]], standard_ids: list[int]
) -> list[tuple[int, int, int, int]]:
    """Transitive closure of the listed hierarchy plus self rows, as CONCEPT_ANCESTOR rows."""
    best: dict[tuple[int, int], tuple[int, int]] = {(a, d): (lo, hi) for a, d, lo, hi in pairs}
    changed = True
    while changed:
        changed = False
        for (a, mid), (lo1, hi1) in list(best.items()):
            for (mid2, d), (lo2, hi2) in list(best.items()):
                if mid2 != mid or a == d:
                    continue
                candidate = (lo1 + lo2, hi1 + hi2)
                current = best.get((a, d))
                merged = candidate if current is None else (min(current[0], lo1 + lo2), max(current[1], hi1 + hi2))
                if merged != current:
                    best[(a, d)] = merged
                    changed = True
    for concept_id in standard_ids:
        best[(concept_id, concept_id)] = (0, 0)
    return sorted((a, d, lo, hi) for (a, d), (lo, hi) in best.items())


def _write_tsv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]] | list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("\t".join(header) + "\n")
        for row in rows:
            handle.write("\t".join(str(v) for v in row) + "\n")


def build_vocabulary_subset(eunomia_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write the Athena-format subset to ``out_dir``; returns rows written per file."""
    catalogue = load_catalogue()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    concepts = eunomia_concepts(Path(eunomia_dir), set(catalogue.eunomia_ids)) + external_concepts(catalogue)
    concepts.sort(key=lambda r: int(r["concept_id"]))
    ids = {int(r["concept_id"]) for r in concepts}
    relationships = _merge_relationships(
        eunomia_relationships(Path(eunomia_dir), ids), catalogue_relationships(catalogue, concepts)
    )
    standard = [int(r["concept_id"]) for r in concepts if r["standard_concept"] == "S"]
    ancestors = ancestor_closure(catalogue.ancestors, standard)
    _check_closed(ids, relationships, ancestors)
    _write_tsv(out_dir / "CONCEPT.csv", CONCEPT_COLUMNS, [[r[c] for c in CONCEPT_COLUMNS] for r in concepts])
    _write_tsv(out_dir / "CONCEPT_RELATIONSHIP.csv", RELATIONSHIP_COLUMNS, relationships)
    _write_tsv(out_dir / "CONCEPT_ANCESTOR.csv", ANCESTOR_COLUMNS, [tuple(map(str, a)) for a in ancestors])
    used_vocabularies = sorted({r["vocabulary_id"] for r in concepts})
    _write_tsv(
        out_dir / "VOCABULARY.csv",
        ("vocabulary_id", "vocabulary_name", "vocabulary_reference", "vocabulary_version", "vocabulary_concept_id"),
        [(v, VOCABULARY_NAMES[v], "OMOP generated", SUBSET_VERSION, "0") for v in used_vocabularies],
    )
    used_domains = sorted({r["domain_id"] for r in concepts})
    _write_tsv(
        out_dir / "DOMAIN.csv",
        ("domain_id", "domain_name", "domain_concept_id"),
        [(d, d, str(DOMAINS[d])) for d in used_domains],
    )
    used_classes = sorted({r["concept_class_id"] for r in concepts})
    _write_tsv(
        out_dir / "CONCEPT_CLASS.csv",
        ("concept_class_id", "concept_class_name", "concept_class_concept_id"),
        [(c, CONCEPT_CLASSES[c][0], str(CONCEPT_CLASSES[c][1])) for c in used_classes],
    )
    _write_tsv(
        out_dir / "RELATIONSHIP.csv",
        (
            "relationship_id",
            "relationship_name",
            "is_hierarchical",
            "defines_ancestry",
            "reverse_relationship_id",
            "relationship_concept_id",
        ),
        list(RELATIONSHIPS),
    )
    write_provenance(out_dir / "PROVENANCE.md", catalogue)
    return {
        "CONCEPT": len(concepts),
        "CONCEPT_RELATIONSHIP": len(relationships),
        "CONCEPT_ANCESTOR": len(ancestors),
        "VOCABULARY": len(used_vocabularies),
        "DOMAIN": len(used_domains),
        "CONCEPT_CLASS": len(used_classes),
        "RELATIONSHIP": len(RELATIONSHIPS),
    }


def _check_closed(
    ids: set[int], relationships: list[tuple[str, ...]], ancestors: list[tuple[int, int, int, int]]
) -> None:
    """Every relationship and ancestor row must point at concepts inside the subset."""
    for row in relationships:
        for end in (int(row[0]), int(row[1])):
            if end not in ids:
                raise VocabularyError(f"relationship {row} points outside the subset", where="concepts.yaml")
    for row in ancestors:
        if row[0] not in ids or row[1] not in ids:
            raise VocabularyError(f"ancestor row {row} points outside the subset", where="concepts.yaml")


def write_provenance(path: Path, catalogue: Catalogue) -> None:
    """One line of evidence per non-Eunomia concept, hierarchy row and mapping."""
    lines = [
        "# Provenance of the vocabulary subset",
        "",
        "Generated by `harmonize.synthetic.vocabulary.build_vocabulary_subset` from",
        "`harmonize/synthetic/concepts.yaml`. Do not edit by hand.",
        "",
        f"* {len(catalogue.eunomia_ids)} concepts are copied field by field from the real Eunomia shard",
        "  `shared/omop/eunomia-synthea27nj/CONCEPT.csv` (OHDSI/EunomiaDatasets, Synthea27Nj_5.4, commit 3efd533e),",
        "  with their `Maps to`/`Is a`/`Subsumes` rows from its `CONCEPT_RELATIONSHIP.csv`.",
        "* The concepts below are not in that shard; each concept_id was found in public OHDSI material",
        "  next to its code and name (where the code was not found verbatim the row says so).",
        "* `vocabulary_concept_id` is 0 for every vocabulary, as in the Eunomia shard's own VOCABULARY.csv.",
        "* DOMAIN, CONCEPT_CLASS and RELATIONSHIP rows (with their real concept ids) are copied from the",
        "  OHDSI/Athena test data SQL named below.",
        "",
        "| concept_id | code | vocabulary | name | where verified |",
        "|---|---|---|---|---|",
    ]
    for c in catalogue.external:
        lines.append(f"| {c['id']} | {c['code']} | {c['vocabulary']} | {c['name']} | {c['evidence']} |")
    lines += ["", "## Maps to", "", "| from | to | where verified |", "|---|---|---|"]
    for m in catalogue.maps_to:
        lines.append(f"| {m['from']} | {m['to']} | {m['evidence']} |")
    lines += [
        "",
        "## Hierarchy",
        "",
        "CONCEPT_ANCESTOR is the transitive closure of these pairs (plus a self row per standard concept);",
        "each pair is an `Is a` row of the Eunomia shard or a CONCEPT_ANCESTOR row of the Athena test data.",
        "Levels of separation are those of the listed pairs (summed along chains inside the subset).",
        "",
        "| ancestor | descendant | min | max |",
        "|---|---|---|---|",
    ]
    for a, d, lo, hi in catalogue.ancestors:
        lines.append(f"| {a} | {d} | {lo} | {hi} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
