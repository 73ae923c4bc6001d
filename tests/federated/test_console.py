"""``fedomop train``'s console (issue 12, item 6): progress per round, no third-party noise, nothing on 0.0.0.0."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from fedomop.federated.console import RoundProgress, human_bytes
from fedomop.federated.testing import build_sites

STUDY = Path(__file__).parents[2] / "federated" / "studies" / "bone_metastasis.yaml"


def test_human_bytes_counts_in_thousands() -> None:
    assert [human_bytes(n) for n in (999, 1000, 45_600, 2_500_000)] == ["999 B", "1.0 kB", "45.6 kB", "2.5 MB"]


def test_one_line_per_round_with_its_seconds_and_bytes() -> None:
    ticks = iter([10.0, 10.5, 13.0, 14.0, 20.0])  # the clock at each exchange's end
    out = io.StringIO()
    progress = RoundProgress(2, console=Console(file=out, width=200), clock=lambda: next(ticks))
    progress("setup", 1.0, 100, 20)  # 9.0 .. 10.0
    progress("round 1", 0.5, 1000, 2000)  # train 10.0 .. 10.5
    progress("round 1", 1.0, 500, 40)  # evaluate 12.0 .. 13.0: the round ran 10.0 .. 13.0
    progress("round 2", 1.0, 1500, 2500)  # 13.0 .. 14.0
    progress("final evaluation", 2.0, 45_600, 700)  # 18.0 .. 20.0
    progress.close()
    assert progress.lines == [
        "setup  1.00 s  sent 100 B  received 20 B",
        "round 1/2  3.00 s  sent 1.5 kB  received 2.0 kB",
        "round 2/2  1.00 s  sent 1.5 kB  received 2.5 kB",
        "final evaluation  2.00 s  sent 45.6 kB  received 700 B",
    ]
    assert out.getvalue().splitlines() == progress.lines and "\x1b[" not in out.getvalue()


@pytest.mark.slow
def test_train_with_stdout_piped_shows_progress_and_no_noise(tmp_path: Path) -> None:
    sites = build_sites(tmp_path / "sites", scale=0.3)
    args = [sys.executable, "-m", "fedomop", "train", "--study", str(STUDY), "--model", "xgboost-hist"]
    args += ["--rounds", "5", "--out", str(tmp_path / "out")]
    args += [x for name in ("site_a", "site_b") for x in ("--sites", str(sites[name]))]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "FORCE_COLOR", "TERM")}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "training xgboost-hist on 2 sites, 5 rounds (simulation)" in done.stderr
    for phase in ("setup", "histogram", "site-alone training", "final evaluation"):
        assert any(line.startswith(f"{phase}  ") and " s  sent " in line for line in done.stderr.splitlines()), phase
    assert "federated (xgboost-hist)" in done.stdout  # the result table stays on stdout
    assert "\x1b[" not in output
    assert "DeprecationWarning" not in output and "DEPRECATED" not in output
    assert "0.0.0.0" not in output
