"""Differential privacy in the deployed ClientApp (issue 19 item 3): DP-FedAvg clipping + noise, RDP budget."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedomop.federated import client_app
from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import auditlog, dp, load_policy
from fedomop.federated.models import mlp
from fedomop.federated.study import STUDIES_DIR

from .conftest import policy_dict, write_policy
from .test_faults import task_identity  # noqa: F401 - autouse: Flower messages need a task identity

EXAMPLE_POLICY = Path(__file__).parents[2] / "federated" / "governance" / "policies" / "example_site.yaml"
STUDY_TEXT = (STUDIES_DIR / "bone_metastasis.yaml").read_text(encoding="utf-8")


def test_the_rdp_accountant_matches_the_hand_value():
    """One order (alpha=10), Gaussian z=2 composed 4 times: RDP = 4 * alpha / (2 z^2) = 5; converted
    with Proposition 12 of Canonne-Kamath-Steinke 2020 (dp-accounting's compute_epsilon):
    eps = 5 + ln(1 - 1/10) - ln(1e-5 * 10) / 9 = 5.918010..."""
    expected = 5 + math.log(0.9) - math.log(1e-4) / 9
    assert dp.epsilon_spent([(2.0, 4)], 1e-5, orders=[10.0]) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(5.918010, abs=1e-6)


def test_calibrated_noise_spends_the_budget_over_the_planned_releases():
    z = dp.calibrate(1.0, 1e-5, 10)
    assert dp.epsilon_spent([(z, 10)], 1e-5) <= 1.0 + 1e-6
    assert dp.epsilon_spent([(z * 0.95, 10)], 1e-5) > 1.0  # not needlessly noisy


def test_clipping_bounds_the_update_norm():
    base = ArrayRecord({"w": Array(np.zeros(4)), "norm.mean": Array(np.ones(2))})
    local = ArrayRecord({"w": Array(np.array([3.0, 0.0, 0.0, 1.7])), "norm.mean": Array(np.ones(2))})  # norm 3.45
    out, norm = dp.clip_and_noise(
        base, local, clip=1.0, multiplier=0.0, rng=np.random.default_rng(0), skip=("norm.mean",)
    )
    assert norm == pytest.approx(math.hypot(3.0, 1.7))
    assert np.linalg.norm(out["w"].numpy()) == pytest.approx(1.0)
    assert out["norm.mean"].numpy().tolist() == [1.0, 1.0]


def test_the_budget_ledger_refuses_once_spent(tmp_path):
    dp_settings = {"epsilon": 6.0, "delta": 1e-5, "clipping_norm": 1.0, "noise_multiplier": 2.0}
    policy = load_policy(write_policy(tmp_path, policy_dict(differential_privacy=dp_settings)))
    allowed = max(k for k in range(1, 50) if dp.epsilon_spent([(2.0, k)], 1e-5) <= 6.0)
    for _ in range(allowed):
        booked = dp.spend(policy, "bone_metastasis", 2.0, requester="r", app_hash="a" * 64)
    assert allowed >= 2 and booked["epsilon_total"] <= 6.0
    with pytest.raises(PolicyError, match="differential privacy budget spent"):
        dp.spend(policy, "bone_metastasis", 2.0, requester="r", app_hash="a" * 64)
    records = auditlog.read(policy.audit_log)
    assert [r["outcome"] for r in records].count("booked") == allowed and records[-1]["outcome"] == "refused"
    assert records[0]["epsilon_round"] > 0 and records[allowed - 1]["epsilon_total"] == booked["epsilon_total"]


@pytest.fixture(scope="module")
def site_db(tmp_path_factory) -> str:
    from fedomop.federated.testing import DEFAULT_SITES, build_sites

    return str(build_sites(tmp_path_factory.mktemp("sites"), DEFAULT_SITES[:1], scale=0.3)["site_a"])


def _policy(tmp_path: Path, differential_privacy: dict | None, limits: dict | None = None) -> Path:
    data = yaml.safe_load(EXAMPLE_POLICY.read_text())
    data["audit_log"] = str(tmp_path / "audit.jsonl")
    if limits:
        data["limits"] = limits
    study = data["studies"]["bone_metastasis"]
    study["approved_apps"] = [{"sha256": client_app.code_hash()}]
    if differential_privacy:
        study["differential_privacy"] = differential_privacy
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _send(handler, policy: Path, db: str, config: dict, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"config": ConfigRecord({"study": STUDY_TEXT, **config})})
    if arrays is not None:
        content["arrays"] = arrays
    node = {"db": db, "site": "site_a", "policy": str(policy)}
    context = Context(run_id=5, node_id=1, node_config=node, state=RecordDict(), run_config={})
    return client_app._handle(handler, None, Message(content, dst_node_id=1, message_type="train"), context)


def _update_norm(base: ArrayRecord, reply: Message) -> float:
    arrays = reply.content["arrays"]
    keys = [k for k in base if k not in mlp.NORM_KEYS]
    return float(np.sqrt(sum(np.sum((arrays[k].numpy() - base[k].numpy()) ** 2) for k in keys)))


def test_the_deployed_client_app_clips_noises_and_books_epsilon(tmp_path, site_db):
    n_features = len(client_app.parse_study(STUDY_TEXT).feature_names)
    base = mlp.initial_record(n_features, np.zeros(n_features), np.ones(n_features))
    config = {"model": "mlp", "epochs": 2, "server-round": 1, "requester": "r"}
    (tmp_path / "plain").mkdir()
    (tmp_path / "private").mkdir()
    plain = _send(client_app._train, _policy(tmp_path / "plain", None), site_db, config, base)
    assert not plain.has_error(), plain.error.reason if plain.has_error() else ""
    # tiny noise so the clipping itself is visible: the update norm is then at most C (+ the noise)
    tiny = {"epsilon": 1e9, "delta": 1e-5, "clipping_norm": 0.05, "noise_multiplier": 1e-3}
    private = _send(client_app._train, _policy(tmp_path / "private", tiny), site_db, config, base)
    assert not private.has_error(), private.error.reason if private.has_error() else ""
    assert _update_norm(base, plain) > 0.05  # without DP the update is not clipped
    assert _update_norm(base, private) <= 0.05 + 0.01  # noise: ~1e-3 * 0.05 * sqrt(#weights)
    assert any(
        not np.array_equal(plain.content["arrays"][k].numpy(), private.content["arrays"][k].numpy()) for k in base
    )
    audit = private.content["audit"]
    assert audit["dp-epsilon-total"] > 0 and audit["dp-delta"] == 1e-5
    booked = [r for r in auditlog.read(tmp_path / "private" / "audit.jsonl") if r["action"] == "dp-release"]
    assert len(booked) == 1 and booked[0]["epsilon_total"] == audit["dp-epsilon-total"]


def test_xgboost_is_refused_under_a_dp_policy(tmp_path, site_db):
    settings = {"epsilon": 1.0, "delta": 1e-5, "clipping_norm": 1.0}
    reply = _send(client_app._describe, _policy(tmp_path, settings), site_db, {"model": "xgboost-hist"})
    assert reply.has_error() and reply.error.code == client_app.ERROR_CODE_REFUSED
    assert "cannot be made differentially private" in reply.error.reason


def test_a_message_past_the_sites_wall_time_is_stopped_and_the_site_answers_the_next(tmp_path, site_db):
    """Item 5: epochs=10**7 kept every site busy; now the site stops at limits.wall_time_s."""
    n_features = len(client_app.parse_study(STUDY_TEXT).feature_names)
    base = mlp.initial_record(n_features, np.zeros(n_features), np.ones(n_features))
    policy = _policy(tmp_path, None, {"max_epochs": 10**7, "wall_time_s": 1.0})
    started = time.monotonic()
    config = {"model": "mlp", "epochs": 10**7, "server-round": 1}
    stopped = _send(client_app._train, policy, site_db, config, base)
    assert time.monotonic() - started < 30
    assert stopped.has_error() and "wall-time budget" in stopped.error.reason
    answered = _send(client_app._train, policy, site_db, {**config, "epochs": 1}, base)
    assert not answered.has_error()
