"""The standard FHIR mapping reads gzipped bulk NDJSON (`*.ndjson.gz`) exactly as the plain files."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import duckdb

from fedomop.harmonize.run import run_mapping
from tests.conftest import MAPPINGS, SYNTHEA_BULK


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
        report = run_mapping(MAPPINGS / "fhir_r4.yaml", source, db, indexes=False)
        assert report.balanced
        with duckdb.connect(str(db), read_only=True) as con:
            counts[zipped] = {
                t: con.execute(f"select count(*) from {t}").fetchall()[0][0]
                for t in ("person", "condition_occurrence", "fedomop_quarantine")
            }
    assert counts[True] == counts[False]
    assert counts[True]["person"] == patients  # every Patient line of the export (counted here, by hand)
    assert all(json.loads(line)["resourceType"] == "Patient" for line in (SYNTHEA_BULK / names[0]).open())
