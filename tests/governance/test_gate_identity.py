"""Who a run belongs to: the certificate a person holds and the gate's ledger, never a typed name."""

from __future__ import annotations

import json

import pytest

from fedomop.federated.deploy import is_loopback, refuse_wildcard
from fedomop.federated.errors import PolicyError
from fedomop.federated.governance.certs import create_ca, create_node_keys, holder, issue_user_cert
from fedomop.federated.governance.gate import LEDGER_ENV, requester_of_run
from fedomop.harmonize.ground.errors import FedomopError


def test_a_persons_certificate_names_them_and_their_role(tmp_path):
    for folder in ("net", "other"):
        (tmp_path / folder).mkdir()
        create_ca(tmp_path / folder)
    cert, _key = issue_user_cert(tmp_path / "net", "researcher", "alice")
    assert holder(cert, tmp_path / "net" / "ca.crt") == ("alice", "researcher")
    with pytest.raises(PolicyError, match="was not issued by the CA"):
        holder(cert, tmp_path / "other" / "ca.crt")


def test_a_site_key_is_not_a_persons_certificate(tmp_path):
    create_ca(tmp_path)
    private, _public = create_node_keys(tmp_path, "site_a")
    with pytest.raises(PolicyError, match="not a PEM certificate"):
        holder(private, tmp_path / "ca.crt")


def _ledger(tmp_path, monkeypatch, entries: list[dict]) -> None:
    ledger = tmp_path / "gate_ledger.jsonl"
    ledger.write_text("".join(json.dumps(e) + "\n" for e in entries))
    monkeypatch.setenv(LEDGER_ENV, str(ledger))


def test_the_requester_comes_from_the_gate_ledger(tmp_path, monkeypatch):
    _ledger(
        tmp_path,
        monkeypatch,
        [{"event": "refused", "caller": None}, {"event": "run", "run_id": 7, "requester": "alice"}],
    )
    assert requester_of_run(7, "alice", "mallory") == {"name": "alice", "source": "gate ledger (client certificate)"}
    with pytest.raises(PolicyError, match="the run config names 'mallory', the gate's ledger 'alice'"):
        requester_of_run(7, "mallory")
    with pytest.raises(PolicyError, match="not submitted through the gate"):
        requester_of_run(8, "alice", wait_s=0.1)


def test_without_a_gate_the_claimed_name_is_marked_unverified(monkeypatch):
    monkeypatch.delenv(LEDGER_ENV, raising=False)
    assert requester_of_run(1, "", "hub")["source"] == "training settings, unverified (no gate)"
    assert "unverified" in requester_of_run(1, "mallory", "hub")["source"]


def test_nothing_listens_on_every_interface():
    for wildcard in ("0.0.0.0", "::", ""):
        with pytest.raises(FedomopError, match="every interface"):
            refuse_wildcard(wildcard, "--host")
    assert refuse_wildcard("10.0.0.5", "--host") == "10.0.0.5"
    assert is_loopback("127.0.0.1:9091") and is_loopback("localhost:1") and is_loopback("[::1]:9091")
    assert not is_loopback("10.1.2.3:9091")
