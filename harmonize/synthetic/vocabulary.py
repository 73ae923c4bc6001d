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

from fedomop.harmonize.ground.errors import VocabularyError

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

SUBSET_VERSION = "fedomop sample subset (Eunomia Synthea27Nj v5.0 09-APR-22 shard + verified additions)"


@dataclass(frozen=True)
class Catalogue:
    """The parsed ``concepts.yaml``: which concepts to take and the hierarchy among them."""

    eunomia_ids: dict[int, str]
    external: list[dict]
    maps_to: list[dict]
    ancestors: list[tuple[int, int, int, int]]
    reference: dict[str, list[dict]]


def load_catalogue() -> Catalogue:
    """Read the concept catalogue packaged next to this module."""
    text = resources.files("fedomop.harmonize.synthetic").joinpath("concepts.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return Catalogue(
        eunomia_ids={int(row["id"]): row["role"] for row in data["eunomia"]},
        external=data["external"],
        maps_to=data["maps_to"],
        ancestors=[(int(a), int(d), int(low), int(high)) for a, d, low, high in data["ancestors"]],
        reference=data["reference"],
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
    rows: list[tuple[str, ...]] = []
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
    reference_rows = reference_tables(catalogue, concepts)
    for name, (header, rows) in reference_rows.items():
        _write_tsv(out_dir / f"{name}.csv", header, rows)
    write_provenance(out_dir / "PROVENANCE.md", catalogue)
    return {
        "CONCEPT": len(concepts),
        "CONCEPT_RELATIONSHIP": len(relationships),
        "CONCEPT_ANCESTOR": len(ancestors),
        **{name: len(rows) for name, (_header, rows) in reference_rows.items()},
    }


def _meta_concept_id(concept_id: int | None, ids: set[int]) -> str:
    """The real meta-concept id where that concept is in the subset, else 0 (OMOP's "no concept").

    VOCABULARY/DOMAIN/CONCEPT_CLASS/RELATIONSHIP rows point into CONCEPT; writing an id whose concept is
    absent would make every such row an orphan for the foreign-key checks.
    """
    return str(concept_id) if concept_id is not None and concept_id in ids else "0"


def _rows_used(rows: list[dict], used: set[str], table: str) -> list[dict]:
    """The catalogue rows whose id the concepts use; every used id must have a row."""
    missing = used - {str(r["id"]) for r in rows}
    if missing:
        raise VocabularyError(
            f"{table} ids {sorted(missing)} are used by concepts but have no reference row",
            where="harmonize/synthetic/concepts.yaml: reference",
            fix=f"add them under reference.{table}",
        )
    return sorted((r for r in rows if str(r["id"]) in used), key=lambda r: str(r["id"]))


def reference_tables(
    catalogue: Catalogue, concepts: list[dict[str, str]]
) -> dict[str, tuple[tuple[str, ...], list[tuple[str, ...]]]]:
    """VOCABULARY, DOMAIN, CONCEPT_CLASS and RELATIONSHIP rows (header, rows) for the concepts of the subset."""
    ids = {int(c["concept_id"]) for c in concepts}
    ref = catalogue.reference
    vocabularies = _rows_used(ref["vocabularies"], {c["vocabulary_id"] for c in concepts}, "vocabularies")
    domains = _rows_used(ref["domains"], {c["domain_id"] for c in concepts}, "domains")
    classes = _rows_used(ref["concept_classes"], {c["concept_class_id"] for c in concepts}, "concept_classes")
    return {
        "VOCABULARY": (
            ("vocabulary_id", "vocabulary_name", "vocabulary_reference", "vocabulary_version", "vocabulary_concept_id"),
            [
                (str(v["id"]), v["name"], "OMOP generated", SUBSET_VERSION, _meta_concept_id(v["concept_id"], ids))
                for v in vocabularies
            ],
        ),
        "DOMAIN": (
            ("domain_id", "domain_name", "domain_concept_id"),
            [(str(d["id"]), str(d["id"]), _meta_concept_id(d["concept_id"], ids)) for d in domains],
        ),
        "CONCEPT_CLASS": (
            ("concept_class_id", "concept_class_name", "concept_class_concept_id"),
            [(str(c["id"]), c["name"], _meta_concept_id(c["concept_id"], ids)) for c in classes],
        ),
        "RELATIONSHIP": (
            (
                "relationship_id",
                "relationship_name",
                "is_hierarchical",
                "defines_ancestry",
                "reverse_relationship_id",
                "relationship_concept_id",
            ),
            [
                (
                    r["id"],
                    r["name"],
                    r["hierarchical"],
                    r["ancestry"],
                    r["reverse"],
                    _meta_concept_id(r["concept_id"], ids),
                )
                for r in ref["relationships"]
            ],
        ),
    }


def _check_closed(
    ids: set[int], relationships: list[tuple[str, ...]], ancestors: list[tuple[int, int, int, int]]
) -> None:
    """Every relationship and ancestor row must point at concepts inside the subset."""
    for row in relationships:
        for end in (int(row[0]), int(row[1])):
            if end not in ids:
                raise VocabularyError(f"relationship {row} points outside the subset", where="concepts.yaml")
    for ancestor in ancestors:
        if ancestor[0] not in ids or ancestor[1] not in ids:
            raise VocabularyError(f"ancestor row {ancestor} points outside the subset", where="concepts.yaml")


def write_provenance(path: Path, catalogue: Catalogue) -> None:
    """One line of evidence per non-Eunomia concept, hierarchy row and mapping."""
    lines = [
        "# Provenance of the vocabulary subset",
        "",
        "Generated by `fedomop.harmonize.synthetic.vocabulary.build_vocabulary_subset` from",
        "`harmonize/synthetic/concepts.yaml`. Do not edit by hand.",
        "",
        f"* {len(catalogue.eunomia_ids)} concepts are copied field by field from the real Eunomia shard",
        "  `shared/omop/eunomia-synthea27nj/CONCEPT.csv` (OHDSI/EunomiaDatasets, Synthea27Nj_5.4, commit 3efd533e),",
        "  with their `Maps to`/`Is a`/`Subsumes` rows from its `CONCEPT_RELATIONSHIP.csv`.",
        "* The concepts below are not in that shard; each concept_id was found in public OHDSI material",
        "  next to its code and name (where the code was not found verbatim the row says so).",
        "* VOCABULARY, DOMAIN, CONCEPT_CLASS and RELATIONSHIP rows come from `reference:` in concepts.yaml",
        "  (names and ids as in OHDSI/Athena `src/test/resources/testdata/*.csv`). Their `*_concept_id` is the",
        "  real meta-concept id only where that concept is itself in the subset (the domain concepts below);",
        "  every other one is 0, OMOP's 'No matching concept' (concept 0 is in the subset), as the Eunomia",
        "  shard's own VOCABULARY.csv does. So every concept id the vocabulary tables store resolves in CONCEPT.",
        "* Meta-concepts the engine writes are in the subset: 0 (unmapped), 756265 (cdm_source.cdm_version_concept_id),",
        "  32528 (episode_concept_id), 1147127 (episode_event_field_concept_id), 32817 (type concept).",
        "  Where their concept_code could not be found it is the placeholder `OMOP generated` (the row says so).",
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
