"""Study specs: the bundled study loads; every malformed file fails naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.federated.errors import StudyError
from fedomop.federated.study import load_study, parse_study

GOOD = (Path(__file__).parents[2] / "federated" / "studies" / "bone_metastasis.yaml").read_text()


def test_bundled_study_loads_by_name():
    study = load_study("bone_metastasis")
    assert study.name == "bone_metastasis"
    assert study.outcome.window.start == 1 and study.outcome.window.end == 365
    assert ("SNOMED", "94222008") in {(c.vocabulary, c.code) for c in study.outcome.concepts}
    assert study.feature_names[:2] == ["age", "male"]
    assert {"person", "condition_occurrence", "measurement", "drug_exposure"} <= set(study.tables())


@pytest.mark.parametrize(
    ("mutate", "where", "message"),
    [
        (lambda t: t.replace("cohort:", "cohorts:"), "cohort", "Field required"),
        (lambda t: t.replace("window: [1, 365]", "window: [365, 1]"), "outcome.window", "after its end"),
        (
            lambda t: t.replace("kind: drug", "kind: drugs"),
            "covariates.12.kind (covariate 'bone_protective')",
            "Input should be",
        ),
        (lambda t: t.replace("name: creatinine", "name: calcium"), "(top level)", "repeated: calcium"),
        (lambda t: t.replace("test_fraction: 0.3", "test_fraction: 1.5"), "test_fraction", "less than 1"),
        (lambda t: t + "\nunexpected: 1\n", "unexpected", "Extra inputs"),
    ],
)
def test_bad_study_names_file_and_key(tmp_path, mutate, where, message):
    path = tmp_path / "bad.yaml"
    path.write_text(mutate(GOOD))
    with pytest.raises(StudyError) as caught:
        load_study(path)
    assert f"{path}: {where}" in str(caught.value)
    assert message in str(caught.value)
    assert caught.value.fix


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ncohort: [unclosed\n")
    with pytest.raises(StudyError, match=r"broken.yaml:\d+"):
        load_study(path)


def test_measurement_without_concepts_is_refused():
    with pytest.raises(StudyError, match="needs `concepts`"):
        parse_study(
            GOOD.replace("  - {name: age, kind: age}", "  - {name: age, kind: age}\n  - {name: alb, kind: measurement}")
        )


def test_cli_reports_bad_study_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("outcome:", "outcomes:"))
    result = CliRunner().invoke(app, ["train", "--study", str(path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, StudyError)
    assert "outcome" in str(result.exception)


def test_histogram_xgboost_refuses_more_sites_than_the_simulation_runs_at_once(tmp_path):
    """Beyond the dispatcher pool the allreduce would wait forever; the run must say so instead of hanging."""
    from fedomop.federated.runner import simulate, simulation_concurrency
    from fedomop.harmonize.ground.errors import FedomopError

    study = Path(__file__).resolve().parents[2] / "federated" / "studies" / "bone_metastasis.yaml"
    sites = [tmp_path / f"site_{i}.duckdb" for i in range(simulation_concurrency() + 1)]
    with pytest.raises(FedomopError, match="needs all .* sites running at once"):
        simulate(study, sites, out=tmp_path / "out", model="xgboost-hist")
