"""The standard FHIR mapping reads gzipped bulk NDJSON (`*.ndjson.gz`) exactly as the plain files."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import duckdb

from fedomop.harmonize.run import run_mapping
from tests.conftest import EUNOMIA, MAPPINGS, SYNTHEA_BULK


def _copy(folder: Path, names: list[str], *, zipped: bool) -> Path:
    folder.mkdir()
    for name in names:
        if zipped:
            with (SYNTHEA_BULK / name).open("rb") as plain, gzip.open(folder / f"{name}.gz", "wb") as packed:
                shutil.copyfileobj(plain, packed)
        else:
            shutil.copy(SYNTHEA_BULK / name, folder / name)
    return folder


def test_gzipped_bulk_export_maps_like_the_plain_files(tmp_path: Path, shared_dir: Path) -> None:
    names = sorted(p.name for p in SYNTHEA_BULK.glob("Patient*.ndjson")) + sorted(
        p.name for p in SYNTHEA_BULK.glob("Condition*.ndjson")
    )
    patients = sum(1 for n in names if n.startswith("Patient") for line in (SYNTHEA_BULK / n).open() if line.strip())
    counts = {}
    for zipped in (False, True):
        source = _copy(tmp_path / f"export_{zipped}", names, zipped=zipped)
        db = tmp_path / f"site_{zipped}.duckdb"
        report = run_mapping(MAPPINGS / "fhir_r4.yaml", source, db, vocabulary=EUNOMIA, indexes=False)
        assert report.balanced
        with duckdb.connect(str(db), read_only=True) as con:
            counts[zipped] = {
                t: con.execute(f"select count(*) from {t}").fetchall()[0][0]
                for t in ("person", "condition_occurrence", "fedomop_quarantine")
            }
    assert counts[True] == counts[False]
    assert counts[True]["person"] == patients  # every Patient line of the export (counted here, by hand)
    assert all(json.loads(line)["resourceType"] == "Patient" for line in (SYNTHEA_BULK / names[0]).open())


def test_a_vocabulary_subset_without_the_mappings_named_concepts_is_reported(tmp_path: Path, shared_dir: Path) -> None:
    """Eunomia's vocabulary subset lacks MALE (8507), FEMALE (8532) and EHR (32817), which fhir_r4.yaml names:
    the run says so (the names cannot be checked, and DQD's foreign-key checks will fail on those rows)."""
    source = _copy(tmp_path / "export", sorted(p.name for p in SYNTHEA_BULK.glob("Patient*.ndjson")), zipped=False)
    report = run_mapping(MAPPINGS / "fhir_r4.yaml", source, tmp_path / "eu.duckdb", vocabulary=EUNOMIA, indexes=False)
    assert {"8507 (MALE)", "8532 (FEMALE)", "32817 (EHR)"} <= set(report.absent_concepts)
    sample_vocabulary = MAPPINGS.parent / "sample_data" / "vocabulary"  # holds 8507, 8532 and 32817
    bundled = run_mapping(
        MAPPINGS / "fhir_r4.yaml", source, tmp_path / "sample.duckdb", vocabulary=sample_vocabulary, indexes=False
    )
    assert not {"8507 (MALE)", "8532 (FEMALE)", "32817 (EHR)"} & set(bundled.absent_concepts)
