"""``include:`` + ``override:``: a site builds on mappings/fhir_r4.yaml and replaces only what it lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedomop.harmonize.ground.errors import MappingError
from fedomop.harmonize.mapping.loader import load_mapping
from tests.conftest import MAPPINGS

STANDARD = MAPPINGS / "fhir_r4.yaml"


def _write(folder: Path, name: str, data: dict[str, object]) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _site(tmp_path: Path, **extra: object) -> Path:
    (tmp_path / "fhir_r4.yaml").write_text(STANDARD.read_text(encoding="utf-8"), encoding="utf-8")
    return _write(tmp_path, "site.yaml", {"include": ["fhir_r4.yaml"], **extra})


@pytest.mark.parametrize("site", ["site_b", "site_d", "synthea_bulk"])
def test_fhir_sites_include_the_standard_mapping_and_redefine_nothing_outside_override(site: str) -> None:
    raw = yaml.safe_load((MAPPINGS / f"{site}.yaml").read_text(encoding="utf-8"))
    assert "fhir_r4.yaml" in raw["include"]
    assert not set(raw) & {"sources", "tables", "site", "cdm_source", "vocabulary"}  # all local changes are listed
    mapping = load_mapping(MAPPINGS / f"{site}.yaml")
    standard = load_mapping(STANDARD)
    assert mapping.site == site
    assert set(mapping.sources) == set(standard.sources)
    overridden = set(raw["override"].get("sources", {}))
    for name in set(standard.sources) - overridden:  # what the site does not list is the standard's, unchanged
        assert mapping.sources[name] == standard.sources[name]
    for table in set(standard.tables) - set(raw["override"].get("tables", {})):
        assert mapping.tables[table] == standard.tables[table]


def test_a_source_is_merged_key_by_key_and_a_table_replaced_whole(tmp_path: Path) -> None:
    path = _site(
        tmp_path,
        override={
            "site": "mine",
            "sources": {"patients": {"files": "people.ndjson", "columns": {"mrn": "identifier.value"}}},
            "tables": {"death": [{"source": "patients", "person": "id", "start": {"date": "deceased"}}]},
        },
    )
    mapping = load_mapping(path)
    patients = mapping.sources["patients"]
    assert mapping.site == "mine"
    assert patients.files == "people.ndjson"
    assert patients.columns == {
        "id": "id",
        "gender": "gender",
        "birth_date": "birthDate",
        "deceased": "deceasedDateTime",
        "died": "deceasedBoolean | deceasedDateTime.exists()",
        "race": "extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race').extension('ombCategory')"
        ".valueCoding.code",
        "ethnicity": "extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity')"
        ".extension('ombCategory').valueCoding.code",
        "mrn": "identifier.value",
    }
    assert len(mapping.tables["death"]) == 1 and mapping.tables["death"][0].type_concept is None
    assert mapping.cdm_source.cdm_source_name == "FHIR R4 export"  # not listed: kept from the standard


def test_redefining_an_included_source_outside_override_is_refused(tmp_path: Path) -> None:
    path = _site(
        tmp_path,
        override={"site": "mine"},
        sources={
            "patients": {
                "format": "fhir_ndjson",
                "files": "P.ndjson",
                "resource_type": "Patient",
                "columns": {"id": "id"},
            }
        },
    )
    with pytest.raises(MappingError, match=r"sources\.patients is defined twice") as err:
        load_mapping(path)
    assert "override" in str(err.value.fix)


def test_a_site_setting_the_standard_s_site_key_without_override_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="'site' is already set"):
        load_mapping(_site(tmp_path, site="mine"))


def test_an_override_that_replaces_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match=r"override: sources\.patiens replaces nothing"):
        load_mapping(_site(tmp_path, override={"sources": {"patiens": {"files": "x.ndjson"}}}))


def test_a_key_both_at_top_level_and_under_override_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "site.yaml", {"include": [], "on_unmapped": "fail", "override": {"on_unmapped": "fail"}})
    with pytest.raises(MappingError, match="both at the top level and under override"):
        load_mapping(path)
