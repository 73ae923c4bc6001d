"""Profile FHIR extracts (bulk NDJSON and Bundle JSON files): which resource types, which code systems in which
elements, and which codes the site's vocabulary does not know, before anyone writes a FHIR mapping.

Resources are read one at a time (an NDJSON file line by line; a Bundle file is one JSON document, read whole)
and only counters are kept: resources per type, and per (resource type, element, system) the codes seen. A
coding is any object with ``system`` and ``code`` (a Coding, inside a CodeableConcept or alone), so codes in
extensions and components are counted too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from fedomop.harmonize.ground.errors import SourceError

# FHIR code system URL -> OMOP vocabulary_id (HL7 terminology, "Using Codes in Resources")
FHIR_SYSTEMS = {
    "http://snomed.info/sct": "SNOMED",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://unitsofmeasure.org": "UCUM",
}
TOP_CODES = 20


@dataclass
class CodingStats:
    """The codes of one system in one element of one resource type."""

    resource_type: str
    element: str  # element path of the coding, list positions dropped (code.coding, valueCodeableConcept.coding)
    system: str
    vocabulary: str | None  # the OMOP vocabulary of the system URL, None when it is not one
    codes: Counter[str] = field(default_factory=Counter)


@dataclass
class FhirProfile:
    files: dict[str, str] = field(default_factory=dict)  # path -> fhir_ndjson | fhir_bundle
    resources: Counter[str] = field(default_factory=Counter)
    codings: dict[tuple[str, str, str], CodingStats] = field(default_factory=dict)

    def add(self, resource: dict[str, Any]) -> None:
        kind = str(resource.get("resourceType") or "(no resourceType)")
        self.resources[kind] += 1
        for element, system, code in _codings(resource, ""):
            key = (kind, element, system)
            if key not in self.codings:
                self.codings[key] = CodingStats(kind, element, system, FHIR_SYSTEMS.get(system))
            self.codings[key].codes[code] += 1


def _codings(value: Any, path: str) -> Iterator[tuple[str, str, str]]:
    if isinstance(value, dict):
        if isinstance(value.get("system"), str) and isinstance(value.get("code"), str | int):
            yield path, value["system"], str(value["code"])
        for key, item in value.items():
            yield from _codings(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for item in value:
            yield from _codings(item, path)


def is_bundle(path: Path) -> bool:
    """A .json file whose top-level resourceType is Bundle (read from its first 4 KiB)."""
    if path.suffix.lower() != ".json":
        return False
    with path.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(4096)
    return '"Bundle"' in head and '"resourceType"' in head


def resources_of(path: Path) -> Iterator[dict[str, Any]]:
    """The resources of an NDJSON file (one per line) or of a Bundle (its entries, nested Bundles opened)."""
    if path.suffix.lower() == ".ndjson":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _json(line, f"{path} line {number}")
        return
    yield from _entries(_json(path.read_text(encoding="utf-8"), str(path)))


def _entries(bundle: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            yield from _entries(resource) if resource.get("resourceType") == "Bundle" else [resource]


def _json(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SourceError(
            f"not JSON: {exc}", where=where, fix="one FHIR resource per line (NDJSON) or a Bundle"
        ) from None
    if not isinstance(value, dict):
        raise SourceError("not a FHIR resource (a JSON object)", where=where, fix="check the file")
    return value


def profile_fhir(paths: list[Path], root: Path) -> FhirProfile:
    profile = FhirProfile()
    for path in paths:
        profile.files[path.relative_to(root).as_posix()] = "fhir_ndjson" if path.suffix == ".ndjson" else "fhir_bundle"
        for resource in resources_of(path):
            profile.add(resource)
    return profile


def _known_codes(vocabulary: pl.DataFrame | None) -> set[tuple[str, str]] | None:
    if vocabulary is None:
        return None
    return set(vocabulary.select("vocabulary_id", "concept_code").iter_rows())


def fhir_to_dict(
    profile: FhirProfile, vocabulary: pl.DataFrame | None, *, shareable: bool, min_cell: int
) -> dict[str, Any]:
    """Resource types and, per (resource type, element, system), codings, distinct codes and the codes that will
    stay unmapped: not in the site vocabulary, or of a system that is no OMOP vocabulary (it needs an entry in the
    mapping's ``vocabulary.fhir_systems`` and a source_to_concept_map). ``shareable`` withholds counts below
    ``min_cell`` and leaves out codes seen fewer times (a rare code can single out a patient)."""
    known = _known_codes(vocabulary)

    def count(n: int) -> int | None:
        return None if shareable and 0 < n < min_cell else n

    systems = []
    for stats in sorted(profile.codings.values(), key=lambda s: (s.resource_type, s.element, s.system)):
        if known is None and stats.vocabulary is not None:
            unmapped = Counter[str]()  # no vocabulary given: only systems outside OMOP are known to stay unmapped
        else:
            unmapped = Counter(
                {
                    c: n
                    for c, n in stats.codes.items()
                    if stats.vocabulary is None or (stats.vocabulary, c) not in (known or set())
                }
            )
        top = [
            [c, n] for c, n in sorted(unmapped.items(), key=lambda i: (-i[1], i[0])) if not shareable or n >= min_cell
        ]
        systems.append(
            {
                "resource_type": stats.resource_type,
                "element": stats.element,
                "system": stats.system,
                "vocabulary": stats.vocabulary,
                "codings": count(sum(stats.codes.values())),
                "distinct_codes": count(len(stats.codes)),
                "unmapped_codings": count(sum(unmapped.values())),
                "top_unmapped": top[:TOP_CODES],
            }
        )
    return {
        "files": profile.files,
        "resource_types": {k: count(n) for k, n in sorted(profile.resources.items())},
        "vocabulary_checked": known is not None,
        "code_systems": systems,
    }
