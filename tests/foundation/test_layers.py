"""The floor plan holds: stage packages import downwards only, and a base install needs no training stack."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO

LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")

# Run a fedomop command with the training stack made unimportable, as on a base install (no [federated] extra).
WITHOUT_TRAINING_STACK = textwrap.dedent(
    """
    import importlib.abc, sys

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"flwr", "xgboost", "torch", "ray", "sklearn"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    sys.argv = ["fedomop", *sys.argv[1:]]
    from fedomop.cli import main
    main()
    """
)


def test_import_contracts_hold() -> None:
    """`lint-imports` checks the contracts in pyproject.toml ([tool.importlinter]) on the real import graph."""
    done = subprocess.run([LINT_IMPORTS], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_planted_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The contract is not vacuous: a ground module importing the run stage is reported."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        textwrap.dedent(
            """
            [tool.importlinter]
            root_package = "fedomop"

            [[tool.importlinter.contracts]]
            name = "ground never imports run"
            type = "forbidden"
            source_modules = ["fedomop.harmonize.ground"]
            forbidden_modules = ["fedomop.harmonize.cdm"]
            """
        )
    )
    # ground must not import cdm: kept today; the same checker on a reversed rule (cdm -> ground) must break
    kept = subprocess.run([LINT_IMPORTS, "--config", str(config)], cwd=REPO, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stdout
    config.write_text(
        config.read_text()
        .replace('["fedomop.harmonize.ground"]', '["fedomop.harmonize.cdm"]')
        .replace('forbidden_modules = ["fedomop.harmonize.cdm"]', 'forbidden_modules = ["fedomop.harmonize.ground"]')
    )
    broken = subprocess.run([LINT_IMPORTS, "--config", str(config)], cwd=REPO, capture_output=True, text=True)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout


def test_map_and_validate_run_without_the_training_stack(tmp_path: Path) -> None:
    """A base install (no flwr, xgboost, torch, ray, scikit-learn) maps, validates and reports."""
    from tests.conftest import MAPPINGS, SAMPLE_DATA

    db = tmp_path / "site_d.duckdb"

    def fedomop(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", WITHOUT_TRAINING_STACK, *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )

    assert fedomop("--help").returncode == 0
    mapped = fedomop(
        "map", "--mapping", str(MAPPINGS / "site_d.yaml"), "--source", str(SAMPLE_DATA / "site_d"), "--db", str(db)
    )
    assert mapped.returncode == 0, mapped.stderr
    validated = fedomop("validate", "--db", str(db), "--out", str(tmp_path / "qa"))
    assert validated.returncode == 0, validated.stderr
    assert (tmp_path / "qa" / "report.html").is_file() and (tmp_path / "qa" / "report.json").is_file()
    training = fedomop("train", "--study", "bone_metastasis", "--sites", str(db))
    assert training.returncode == 2
    assert "pip install 'fedomop[federated" in training.stderr and "Traceback" not in training.stderr
