"""The generator: deterministic bytes, streaming in chunks, CLI, and the shipped sample_data is its default output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.ground.errors import MappingError, SourceError, VocabularyError
from fedomop.harmonize.synthetic import generator
from fedomop.harmonize.synthetic.generator import generate_sample_data, split_persons
from tests.conftest import EUNOMIA, SAMPLE_DATA


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_and_workers_do_not_matter(tmp_path):
    first = generate_sample_data(tmp_path / "one", seed=7, persons=160, eunomia_dir=EUNOMIA)
    generate_sample_data(tmp_path / "two", seed=7, persons=160, eunomia_dir=EUNOMIA, workers=2)
    assert first.persons == {"site_a": 64, "site_b": 38, "site_c": 50, "site_d": 8}
    one, two = _digest(tmp_path / "one"), _digest(tmp_path / "two")
    assert len(one) > 20
    assert one == two


def test_another_seed_gives_other_patients(tmp_path):
    generate_sample_data(tmp_path / "a", seed=1, persons=40, sites=["site_a"], vocabulary=False)
    generate_sample_data(tmp_path / "b", seed=2, persons=40, sites=["site_a"], vocabulary=False)
    assert (tmp_path / "a/site_a/patients.csv").read_bytes() != (tmp_path / "b/site_a/patients.csv").read_bytes()


def test_chunking_streams_and_ids_stay_unique(tmp_path, monkeypatch):
    """With a tiny chunk the run needs several chunks; every person is written once, in order."""
    monkeypatch.setattr(generator, "CHUNK_SIZE", 25)
    generate_sample_data(tmp_path, seed=3, persons=130, sites=["site_a", "site_b"], vocabulary=False)
    lines = (tmp_path / "site_a/patients.csv").read_text(encoding="utf-8").splitlines()[1:]
    ids = [line.split(",")[0] for line in lines]
    assert len(ids) == 81 and len(set(ids)) == 81
    assert ids == sorted(ids)
    patients = (tmp_path / "site_b/Patient.ndjson").read_text(encoding="utf-8").splitlines()
    assert len(patients) == 49


def test_cli_writes_the_requested_sites(tmp_path):
    result = CliRunner().invoke(
        app,
        ["sample-data", "--out", str(tmp_path), "--seed", "5", "--persons", "50", "--sites", "site_c,site_d",
         "--eunomia", str(EUNOMIA)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site_c", "site_d", "vocabulary"]
    assert "site_c: 43 persons" in result.output
    assert len(list((tmp_path / "site_d/bundles").glob("*.json"))) == 7


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(MappingError, match="unknown sample site"):
        generate_sample_data(tmp_path, sites=["site_x"], vocabulary=False)
    with pytest.raises(MappingError, match="less than one person per site"):
        split_persons(3, ["site_a", "site_b", "site_c", "site_d"])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SourceError, match="cannot create the output folder"):
        generate_sample_data(blocker / "out", persons=10, vocabulary=False)
    with pytest.raises(VocabularyError, match="Eunomia vocabulary file not found"):
        generate_sample_data(tmp_path / "v", persons=10, eunomia_dir=tmp_path / "nowhere")


@pytest.mark.slow
def test_shipped_sample_data_is_the_default_output(tmp_path):
    """`fedomop sample-data` with its defaults reproduces sample_data/ byte for byte."""
    generate_sample_data(tmp_path, eunomia_dir=EUNOMIA, workers=2)
    assert _digest(tmp_path) == _digest(SAMPLE_DATA)
