"""App hashes: deterministic, content-sensitive; a bundle is hashed over every entry and compiled code is refused."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import app_hash, study_app_hash
from fedomop.federated.governance.approval import bundle_hash, fab_hash


def _app(root):
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "client_app.py").write_text("x = 1\n")
    (root / "pyproject.toml").write_text("[project]\nname='a'\n")
    return root


def test_directory_hash_is_deterministic_and_ignores_pycache(tmp_path):
    app = _app(tmp_path / "app")
    first = app_hash(app)
    (app / "pkg" / "__pycache__").mkdir()
    (app / "pkg" / "__pycache__" / "client_app.cpython-311.pyc").write_bytes(b"\0junk")
    assert app_hash(app) == first
    assert len(first) == 64 and int(first, 16) >= 0
    other = _app(tmp_path / "elsewhere")
    assert app_hash(other) == first  # location does not matter


@pytest.mark.parametrize("name", ["stray.pyc", "__init__.pyo", "fast.cpython-311-x86_64-linux-gnu.so", "win.pyd"])
def test_a_directory_with_compiled_code_outside_pycache_is_not_approvable(tmp_path, name):
    app = _app(tmp_path / "app")
    (app / "pkg" / name).write_bytes(b"\0junk")  # Python imports a sourceless .pyc or an extension module
    with pytest.raises(PolicyError, match="compiled code"):
        app_hash(app)


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


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


SOURCES = {"pyproject.toml": b"[project]\nname='a'\n", "fedomop/__init__.py": b"x = 1\n"}


@pytest.mark.parametrize(
    "extra",
    ["fedomop/__init__.pyc", "fedomop/__pycache__/__init__.cpython-311.pyc", "fedomop/x.pyo", "fedomop/_c.abi3.so"],
)
def test_a_bundle_with_compiled_code_is_not_approvable(tmp_path, extra):
    """The red team's FAB: an approved bundle plus fedomop/__init__.pyc hashed like the approved one, and Flower
    puts the bundle first on sys.path, so the byte code ran. Every way of hashing a bundle now refuses it."""
    approved = _zip(SOURCES)
    evil = _zip({**SOURCES, extra: b"\x00\x00\x00\x00byte code"})
    bundle_hash(approved)  # sources only: fine
    with pytest.raises(PolicyError, match=r"compiled code .*not approvable"):
        bundle_hash(evil)
    (tmp_path / "evil.fab").write_bytes(evil)
    with pytest.raises(PolicyError, match="compiled code"):
        app_hash(tmp_path / "evil.fab")


def test_a_bundle_is_hashed_over_every_entry(tmp_path):
    """No entry is skipped: a data file or a dot-folder added to an approved bundle changes its hash."""
    approved = bundle_hash(_zip(SOURCES))
    for extra in ("fedomop/payload.txt", ".git/hooks/x.py", ".mypy_cache/x.json"):
        assert bundle_hash(_zip({**SOURCES, extra: b"x"})) != approved, extra


def test_the_executor_refuses_and_audits_a_bundle_with_byte_code(tmp_path):
    from fedomop.federated.executor import admit
    from fedomop.federated.governance import auditlog
    from fedomop.federated.runner import APP_DIR
    from fedomop.federated.study import STUDIES_DIR
    from fedomop.federated.testing import approving_policies

    study_file = STUDIES_DIR / "bone_metastasis.yaml"
    policy = approving_policies(["site_a"], tmp_path, study_file, requester="alice")["site_a"]
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(Path(APP_DIR).resolve()))) as source:
        approved = {info.filename: source.read(info) for info in source.infolist()}
    admit(policy, _zip(approved), study_file.read_text(), "alice")  # the approved bundle is admitted
    evil = _zip({**approved, "fedomop/__init__.pyc": b"\x00\x00\x00\x00byte code"})
    with pytest.raises(PolicyError, match="compiled code"):
        admit(policy, evil, study_file.read_text(), "alice")
    (record,) = [r for r in auditlog.read(tmp_path / "site_a.audit.jsonl") if r["outcome"] == "refused"]
    assert record["action"] == "execute" and "fedomop/__init__.pyc" in record["reason"]


def test_flower_built_fab_of_the_shipped_app_hashes_alike_everywhere(tmp_path):
    """``governance hash --fab DIR``, ``governance hash X.fab`` and the executor's in-memory hash agree on the FAB
    Flower builds from the shipped app; it holds sources only, so the stricter rules leave its hash as it was
    (the old rule skipped only compiled entries, and there are none), and a __pycache__ in the app folder
    changes nothing."""
    from typer.testing import CliRunner

    from fedomop.cli import app as cli
    from fedomop.federated.governance.hashing import _digest, compiled
    from fedomop.federated.runner import APP_DIR

    folder = tmp_path / "flower_app"
    shutil.copytree(APP_DIR, folder)
    content = build_fab_from_disk(folder.resolve())
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        old_rule = _digest((n, archive.read(n)) for n in names if not n.endswith((".pyc", ".pyo")))
    assert names and not any(compiled(n) for n in names)
    (tmp_path / "app.fab").write_bytes(content)
    in_memory = bundle_hash(content)
    assert in_memory == old_rule == app_hash(tmp_path / "app.fab") == fab_hash(folder)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0junk")
    assert fab_hash(folder) == in_memory
    runner = CliRunner()
    by_fab = runner.invoke(cli, ["governance", "hash", "--fab", str(folder)])
    by_file = runner.invoke(cli, ["governance", "hash", str(tmp_path / "app.fab")])
    assert by_fab.exit_code == by_file.exit_code == 0, by_fab.output + by_file.output
    assert by_fab.output.strip() == by_file.output.strip() == in_memory
