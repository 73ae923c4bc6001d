"""TLS + SuperNode authentication with credentials from `fedomop certs create` (real processes)."""

from __future__ import annotations

import json
import subprocess

import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.federated.governance.certs import (
    register_supernode,
    superlink_tls_args,
    supernode_auth_args,
    write_flower_connection,
)

from .flower_procs import BIN, Cluster, flower_env, free_port

pytestmark = pytest.mark.slow


@pytest.fixture()
def cluster(tmp_path):
    cluster = Cluster(tmp_path, tmp_path / "flwr_home")
    yield cluster
    cluster.stop_all()


def test_certs_create_writes_a_ca_server_cert_and_site_keys(tmp_path):
    result = CliRunner().invoke(app, ["certs", "create", "--out", str(tmp_path / "pki"), "--sites", "2"])
    assert result.exit_code == 0, result.output
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    pki = tmp_path / "pki"
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for site in ("site_1", "site_2"):
        private = load_ssh_private_key((pki / f"{site}.key").read_bytes(), None)
        public = load_ssh_public_key((pki / f"{site}.pub").read_bytes())
        assert isinstance(private.curve, ec.SECP256R1) and private.public_key() == public
        assert (pki / f"{site}.key").stat().st_mode & 0o077 == 0


def test_unauthenticated_supernodes_are_refused_by_a_tls_auth_superlink(tmp_path, cluster):
    pki = tmp_path / "pki"
    assert (
        CliRunner()
        .invoke(app, ["certs", "create", "--out", str(pki), "--site", "site_a", "--site", "site_b"])
        .exit_code
        == 0
    )
    port = free_port()
    cluster.superlink(port, [*superlink_tls_args(pki), "--database", str(tmp_path / "link.db")])
    write_flower_connection(cluster.flwr_home, "hub", f"127.0.0.1:{port}", pki / "ca.crt")
    node_id = register_supernode(pki / "site_a.pub", flwr_home=cluster.flwr_home, connection="hub")

    registered = cluster.supernode("site_a", port, supernode_auth_args(pki, "site_a"))
    unregistered = cluster.supernode("site_b", port, supernode_auth_args(pki, "site_b"))
    anonymous = cluster.supernode("anonymous", port, ["--root-certificates", str(pki / "ca.crt")])

    assert registered.wait_for(f"SuperNode ID: {node_id}", 60), registered.text()[-2000:]
    assert unregistered.popen.wait(60) != 0 and "Failed to activate SuperNode" in unregistered.text()
    assert anonymous.popen.wait(60) != 0 and "must be registered" in anonymous.text()
    assert registered.popen.poll() is None  # the authenticated site stays connected

    listing = subprocess.run(
        [str(BIN / "flwr"), "supernode", "ls", "hub", "--format", "json"],
        capture_output=True, text=True, env=flower_env(cluster.flwr_home), timeout=60, check=True,
    )  # fmt: skip
    nodes = json.loads(listing.stdout[listing.stdout.index("{") :])["nodes"]
    assert [(int(n["node-id"]), n["status"]) for n in nodes] == [(node_id, "online")]
    assert (tmp_path / "link.db").exists()
