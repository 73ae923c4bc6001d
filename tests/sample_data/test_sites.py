"""The shipped sample sites: codes exist, FHIR is valid R4, dialects are what the docs say, truth matches sources."""

from __future__ import annotations

import collections
import csv
import json
import re
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fedomop.harmonize.synthetic.codebook import codes
from tests.conftest import SAMPLE_DATA

VOCABULARY = SAMPLE_DATA / "vocabulary"
CSV_CODE_COLUMNS = {
    "site_a": {
        "conditions.csv": ("icd10_code", "ICD10CM"),
        "observations.csv": ("loinc_code", "LOINC"),
        "medications.csv": ("rxnorm_code", "RxNorm"),
        "procedures.csv": ("snomed_code", "SNOMED"),
    },
    "site_c": {
        "diagnostics.csv": ("CODE_CIM9", "ICD9CM"),
        "biologie.csv": ("CODE_ANALYSE", "SITE_C_LAB"),
        "traitements.csv": ("CODE_MEDICAMENT", "SITE_C_DRUG"),
        "actes.csv": ("CODE_ACTE", "SITE_C_PROC"),
    },
}
SYSTEMS = {
    "http://snomed.info/sct": "SNOMED",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
}
CODED_ELEMENTS = ("code", "medicationCodeableConcept")


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.fixture(scope="module")
def known_codes() -> set[tuple[str, str]]:
    """(vocabulary, code) pairs the harmonizer can resolve: vocabulary subset plus each site's own map."""
    known = {(r["vocabulary_id"], r["concept_code"]) for r in _read_tsv(VOCABULARY / "CONCEPT.csv")}
    for site in ("site_a", "site_c"):
        with (SAMPLE_DATA / site / "source_to_concept_map.csv").open(encoding="utf-8") as handle:
            known |= {(r["source_vocabulary_id"], r["source_code"]) for r in csv.DictReader(handle)}
    return known


def _unmapped(site: str) -> set[str]:
    return {str(code) for kind in codes()["unmapped"][site].values() for code in kind}


def _csv_rows(site: str, name: str) -> list[dict[str, str]]:
    encoding, delimiter = ("latin-1", ";") if site == "site_c" else ("utf-8", ",")
    with (SAMPLE_DATA / site / name).open(encoding=encoding, newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def _fhir_resources(site: str):
    """(source_file, resource) for every resource of a FHIR site."""
    folder = SAMPLE_DATA / site
    for path in sorted(folder.glob("*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            yield path.name, json.loads(line)
    for path in sorted((folder / "bundles").glob("*.json")) if (folder / "bundles").exists() else []:
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            yield f"bundles/{path.name}", entry["resource"]


def _truth(site: str) -> list[dict[str, str]]:
    with (SAMPLE_DATA / site / "ground_truth.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("site", ["site_a", "site_c"])
def test_every_csv_code_is_in_the_vocabulary_site_map_or_unmapped_list(site, known_codes):
    unmapped = _unmapped(site)
    seen = collections.Counter()
    for name, (column, vocabulary) in CSV_CODE_COLUMNS[site].items():
        for row in _csv_rows(site, name):
            code = row[column]
            if (vocabulary, code) not in known_codes:
                assert code in unmapped, f"{site}/{name}: {vocabulary} {code} is not resolvable"
                seen[code] += 1
    assert set(seen) == unmapped  # each deliberately unmapped code is really written


@pytest.mark.parametrize("site", ["site_b", "site_d"])
def test_every_fhir_code_is_in_the_vocabulary_or_unmapped_list(site, known_codes):
    unmapped = _unmapped(site)
    written = set()
    for _, resource in _fhir_resources(site):
        for element in CODED_ELEMENTS:
            for coding in resource.get(element, {}).get("coding", []):
                pair = (SYSTEMS[coding["system"]], coding["code"])
                written.add(pair)
                assert pair in known_codes or coding["code"] in unmapped, f"{site}: {pair} is not in the vocabulary"
    vocabularies = {v for v, _ in written}
    assert "SNOMED" in vocabularies and "LOINC" in vocabularies and "RxNorm" in vocabularies
    if site == "site_d":
        assert ("ICD10CM", "C61") in written  # site D mixes SNOMED and ICD-10-CM


def test_site_c_is_latin1_with_day_first_dates():
    raw = (SAMPLE_DATA / "site_c" / "patients.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    text = raw.decode("latin-1")
    assert re.search("[éèêëïîôûüçÉ]", text)
    dates = [row["DATE_PRELEVEMENT"] for row in _csv_rows("site_c", "biologie.csv")]
    parsed = [d for d in dates if re.fullmatch(r"\d{2}/\d{2}/\d{4}", d)]
    assert len(parsed) >= len(dates) - 2  # the deliberately invalid dates aside
    assert any(int(d[:2]) > 12 for d in parsed)  # unambiguous day-first
    units = {row["UNITE"] for row in _csv_rows("site_c", "biologie.csv")}
    assert {"mmol/L", "µmol/L", "g/L"} <= units


def test_site_a_is_iso_and_conventional_units():
    rows = _csv_rows("site_a", "observations.csv")
    assert {"mg/dL", "U/L", "g/dL"} <= {r["unit"] for r in rows}
    good = [r for r in rows if re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["observed_on"])]
    assert len(good) >= len(rows) - 2


@pytest.mark.parametrize("site", ["site_b", "site_d"])
def test_fhir_resources_are_valid_r4(site):
    """Every resource parses with fhir.resources R4B, except those the truth marks as having an invalid date."""
    invalid_date = {r["source_row"] for r in _truth(site) if r["reason"] == "invalid_date"}
    types = collections.Counter()
    for n, (_, resource) in enumerate(_fhir_resources(site)):
        if resource["id"] in invalid_date:
            with pytest.raises(ValueError):
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            continue
        if site == "site_b" and n % 7:  # a sample keeps the test fast; site D is checked in full
            continue
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        types[resource["resourceType"]] += 1
    assert set(types) == {"Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure"}


def test_site_d_bundles_are_transactions_with_urn_references():
    for path in sorted((SAMPLE_DATA / "site_d" / "bundles").glob("*.json"))[:40]:
        bundle = json.loads(path.read_text(encoding="utf-8"))
        get_fhir_model_class("Bundle").model_validate(bundle)
        assert bundle["type"] == "transaction"
        urls = {e["fullUrl"] for e in bundle["entry"]}
        assert all(u.startswith("urn:uuid:") for u in urls)
        for entry in bundle["entry"]:
            subject = entry["resource"].get("subject", {}).get("reference")
            assert subject is None or subject.startswith("urn:uuid:")


@pytest.mark.parametrize("site", ["site_a", "site_b", "site_c", "site_d"])
def test_ground_truth_accounts_for_every_source_record(site):
    """Each source record appears in the ground truth, and nothing else does."""
    truth = _truth(site)
    described = collections.Counter()
    for row in {(r["source_file"], r["source_row"]) for r in truth}:
        described[row[0]] += 1
    if site in CSV_CODE_COLUMNS:
        for path in (SAMPLE_DATA / site).glob("*.csv"):
            if path.name in ("ground_truth.csv", "truth_persons.csv", "source_to_concept_map.csv"):
                continue
            data_rows = len(path.read_bytes().splitlines()) - 1
            assert described[path.name] == data_rows, path.name
    else:
        files = collections.Counter(name for name, _ in _fhir_resources(site))
        assert described == files
    tables = {r["expected_table"] for r in truth}
    assert {"person", "visit_occurrence", "condition_occurrence", "measurement", "drug_exposure"} <= tables
    assert {"procedure_occurrence", "death", "quarantine"} <= tables
    reasons = {r["reason"] for r in truth if r["expected_table"] == "quarantine"}
    assert reasons == {"implausible_value", "invalid_date", "unknown_person", "missing_value"}


def test_ground_truth_values_are_in_standard_units():
    """Site C writes SI units; its truth holds the converted value and the standard unit concept."""
    truth = [r for r in _truth("site_c") if r["expected_table"] == "measurement" and r["concept_id"] == "3006906"]
    rows = _csv_rows("site_c", "biologie.csv")
    first = truth[0]
    source = rows[int(first["source_row"]) - 1]
    assert source["UNITE"] == "mmol/L"
    assert first["unit_concept_id"] == "8840"
    assert float(first["value_as_number"]) == pytest.approx(float(source["RESULTAT"]) * 4.008, abs=1e-6)


def test_source_to_concept_maps_load_into_a_real_vocabulary(tmp_path):
    import polars as pl

    from fedomop.harmonize.ground.db import connect
    from fedomop.harmonize.vocabulary.loader import load_source_to_concept_map, load_vocabulary
    from fedomop.harmonize.vocabulary.resolve import descendants, resolve_codes

    db = connect(tmp_path / "vocab.duckdb")
    counts = load_vocabulary(db, VOCABULARY)
    assert counts["concept"] > 60 and counts["concept_ancestor"] > counts["concept"]
    assert load_source_to_concept_map(db, SAMPLE_DATA / "site_a" / "source_to_concept_map.csv") > 0
    assert load_source_to_concept_map(db, SAMPLE_DATA / "site_c" / "source_to_concept_map.csv") > 0
    resolved = resolve_codes(
        db,
        pl.DataFrame(
            {
                "vocabulary_id": ["ICD10CM", "ICD10CM", "ICD9CM", "SITE_C_LAB", "ICD10CM"],
                "source_code": ["C61", "C50.911", "198.5", "CA", "Z85.3"],
            }
        ),
    )
    assert resolved["concept_id"].to_list() == [200962, 4112853, 432851, 3006906, 0]
    assert resolved["source_concept_id"].to_list()[0] == 35206266
    assert descendants(db, [432851]) == [432851, 4196262]
    assert 4310703 in descendants(db, [4115276])


def test_every_written_unit_has_a_unit_concept_in_the_vocabulary():
    """Sites write U/L, µmol/L ...; each must name a UCUM concept of the subset (some need a synonym: U/L -> [U]/L)."""
    from fedomop.harmonize.synthetic.codebook import UNIT_CONCEPTS

    written = {r["unit"] for r in _csv_rows("site_a", "observations.csv")}
    written |= {r["UNITE"] for r in _csv_rows("site_c", "biologie.csv")}
    for site in ("site_b", "site_d"):
        written |= {
            resource["valueQuantity"].get("unit", "")
            for _, resource in _fhir_resources(site)
            if "valueQuantity" in resource
        }
    units = {int(r["concept_id"]) for r in _read_tsv(VOCABULARY / "CONCEPT.csv") if r["domain_id"] == "Unit"}
    assert written == {"", "U/L", "mg/dL", "ng/mL", "g/dL", "mmol/L", "µmol/L", "g/L", "µg/L"}
    for unit in written - {""}:
        assert UNIT_CONCEPTS[unit] in units, unit


def test_shipped_sample_data_stays_small():
    """Compact JSON and a few thousand persons keep the repository light (budget: 40 MiB)."""
    total = sum(p.stat().st_size for p in SAMPLE_DATA.rglob("*") if p.is_file())
    assert total < 40 * 2**20
    first = (SAMPLE_DATA / "site_b" / "Patient.ndjson").read_text(encoding="utf-8").splitlines()[0]
    assert ": " not in first and "\n" not in first  # no indentation or pretty-printing
