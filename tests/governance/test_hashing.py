"""App hashes: deterministic, content-sensitive, blind to byte-code caches."""

from __future__ import annotations

import zipfile

import pytest

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import app_hash, study_app_hash


def _app(root):
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "client_app.py").write_text("x = 1\n")
    (root / "pyproject.toml").write_text("[project]\nname='a'\n")
    return root


def test_hash_is_deterministic_and_ignores_pycache(tmp_path):
    app = _app(tmp_path / "app")
    first = app_hash(app)
    (app / "pkg" / "__pycache__").mkdir()
    (app / "pkg" / "__pycache__" / "client_app.cpython-311.pyc").write_bytes(b"\0junk")
    (app / "pkg" / "stray.pyc").write_bytes(b"\0junk")
    assert app_hash(app) == first
    assert len(first) == 64 and int(first, 16) >= 0
    other = _app(tmp_path / "elsewhere")
    assert app_hash(other) == first  # location does not matter


def test_hash_changes_with_content_and_with_renames(tmp_path):
    app = _app(tmp_path / "app")
    first = app_hash(app)
    (app / "pkg" / "client_app.py").write_text("x = 2\n")
    second = app_hash(app)
    (app / "pkg" / "client_app.py").rename(app / "pkg" / "server_app.py")
    assert len({first, second, app_hash(app)}) == 3


def test_zip_bundle_hashes_like_its_directory(tmp_path):
    app = _app(tmp_path / "app")
    bundle = tmp_path / "app.fab"
    with zipfile.ZipFile(bundle, "w") as archive:
        for path in sorted(app.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(app).as_posix())
    assert app_hash(bundle) == app_hash(app)


def test_study_hash_covers_study_and_code(tmp_path):
    app = _app(tmp_path / "app")
    study = tmp_path / "study.yaml"
    study.write_text("name: s\n")
    first = study_app_hash(study, app)
    study.write_text("name: s\nwindow: 30\n")
    assert study_app_hash(study, app) != first
    with pytest.raises(PolicyError, match="study file not found"):
        study_app_hash(tmp_path / "missing.yaml", app)
    with pytest.raises(PolicyError, match="no such file"):
        app_hash(tmp_path / "missing")
