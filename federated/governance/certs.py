"""Test and small-deployment PKI: a CA, the SuperLink's TLS certificate, and per-site node keys.

Flower's SuperLink serves TLS with ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem
--ssl-keyfile server.key``; SuperNodes trust it with ``--root-certificates ca.crt``.
With ``--enable-supernode-auth`` the SuperLink only accepts SuperNodes whose public
key was registered (``flwr supernode register <site>.pub``); each SuperNode signs its
requests with ``--auth-supernode-private-key <site>.key``. Flower reads those keys as
OpenSSH-format NIST elliptic-curve keys, so that is what is written here (ECDSA P-256).

Real deployments should use the hospital's own CA; this is for tests and pilots.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedomop.federated.errors import PolicyError

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


@dataclass
class Credentials:
    """Where everything was written."""

    out: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    site_private_keys: dict[str, Path] = field(default_factory=dict)
    site_public_keys: dict[str, Path] = field(default_factory=dict)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedomop"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _write_private_pem(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


def _alt_names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    days: int,
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
    )


def create_ca(out: Path, *, days: int = 825) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("fedomop test CA")
    cert = (
        _certificate(name, name, key.public_key(), key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (out / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private_pem(key, out / "ca.key")
    return key, cert


def create_server_cert(
    out: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: tuple[str, ...], *, days: int = 825
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _certificate(_name(hosts[0]), ca_cert.subject, key.public_key(), ca_key, days)
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / "server.pem", out / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private_pem(key, key_path)
    return cert_path, key_path


def create_node_keys(out: Path, site: str) -> tuple[Path, Path]:
    """An ECDSA P-256 key pair in OpenSSH format: ``<site>.key`` (private) and ``<site>.pub``."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    private_path, public_path = out / f"{site}.key", out / f"{site}.pub"
    private_path.write_bytes(private)
    private_path.chmod(0o600)
    public_path.write_bytes(public + f" {site}\n".encode())
    return private_path, public_path


def create_client_cert(
    out: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, site: str, *, days: int = 825
) -> tuple[Path, Path]:
    """A TLS client certificate ``<site>.tls.pem`` / ``<site>.tls.key`` signed by the CA: the site's
    side of the mutual TLS that XGBoost's federated allreduce server requires (histogram training)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _certificate(_name(site), ca_cert.subject, key.public_key(), ca_key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / f"{site}.tls.pem", out / f"{site}.tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private_pem(key, key_path)
    return cert_path, key_path


def xgboost_server_tls(out: Path | str) -> dict[str, str]:
    """``xgboost.federated.run_federated_server`` arguments: serve TLS, accept only CA-signed sites."""
    out = Path(out)
    return {
        "server_key_path": str(out / "server.key"),
        "server_cert_path": str(out / "server.pem"),
        "client_cert_path": str(out / "ca.crt"),
    }


def xgboost_client_tls(out: Path | str, site: str) -> dict[str, str]:
    """``CommunicatorContext`` arguments for a site: trust the CA, present ``<site>.tls.pem``."""
    out = Path(out)
    return {
        "federated_server_cert_path": str(out / "ca.crt"),
        "federated_client_key_path": str(out / f"{site}.tls.key"),
        "federated_client_cert_path": str(out / f"{site}.tls.pem"),
    }


def site_names(sites: int | None = None, names: list[str] | None = None) -> list[str]:
    """Site names from a count (site_1 ... site_N) or an explicit list, checked to be file-name safe."""
    chosen = list(names or []) or [f"site_{i}" for i in range(1, (sites or 0) + 1)]
    if not chosen:
        raise PolicyError("no sites given", where="certs create", fix="pass --sites N or --site NAME (repeatable)")
    bad = [name for name in chosen if not _SITE_NAME.match(name)]
    if bad or len(set(chosen)) != len(chosen):
        raise PolicyError(
            f"invalid or repeated site names: {', '.join(bad) or ', '.join(chosen)}",
            where="certs create --site",
            fix="use distinct names made of letters, digits, '.', '_' or '-'",
        )
    return chosen


def create_credentials(
    out: Path | str, sites: list[str], *, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 825
) -> Credentials:
    """Write ca.crt/ca.key, server.pem/server.key (SAN: hosts) and <site>.key/<site>.pub for each site."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    existing = [p.name for p in (out / "ca.crt", out / "server.pem") if p.exists()]
    if existing:
        raise PolicyError(
            f"{', '.join(existing)} already exist; refusing to overwrite keys",
            where=str(out),
            fix="choose an empty --out folder",
        )
    ca_key, ca_cert = create_ca(out, days=days)
    server_cert, server_key = create_server_cert(out, ca_key, ca_cert, hosts, days=days)
    credentials = Credentials(out, out / "ca.crt", server_cert, server_key)
    for site in sites:
        private, public = create_node_keys(out, site)
        credentials.site_private_keys[site] = private
        credentials.site_public_keys[site] = public
        create_client_cert(out, ca_key, ca_cert, site, days=days)
    return credentials


def superlink_tls_args(out: Path | str) -> list[str]:
    """``flower-superlink`` arguments for TLS + SuperNode authentication with credentials in ``out``."""
    out = Path(out)
    return [
        "--ssl-ca-certfile", str(out / "ca.crt"),
        "--ssl-certfile", str(out / "server.pem"),
        "--ssl-keyfile", str(out / "server.key"),
        "--enable-supernode-auth",
    ]  # fmt: skip


def supernode_auth_args(out: Path | str, site: str) -> list[str]:
    """``flower-supernode`` arguments: trust the CA and sign requests with the site's key."""
    out = Path(out)
    return ["--root-certificates", str(out / "ca.crt"), "--auth-supernode-private-key", str(out / f"{site}.key")]


def write_flower_connection(flwr_home: Path | str, name: str, address: str, ca_cert: Path | str) -> Path:
    """A Flower CLI config (``$FLWR_HOME/config.toml``) naming a TLS SuperLink connection, for ``flwr`` commands."""
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n'
        f'root-certificates = "{Path(ca_cert).resolve()}"\n',
        encoding="utf-8",
    )
    return path


def register_supernode(public_key: Path | str, *, flwr_home: Path | str, connection: str, timeout: float = 180) -> int:
    """Register a site's public key with an auth-enabled SuperLink (``flwr supernode register``); returns its node id."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    flwr = shutil.which("flwr") or str(Path(sys.executable).with_name("flwr"))
    env = {**os.environ, "FLWR_HOME": str(flwr_home)}
    result = subprocess.run(
        [flwr, "supernode", "register", str(public_key), connection, "--format", "json"],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip
    try:
        answer = json.loads(result.stdout[result.stdout.index("{") :])
        return int(answer["node-id"])
    except (ValueError, KeyError):
        raise PolicyError(
            f"registering {public_key} failed: {(result.stdout + result.stderr).strip()[-400:]}",
            where=f"flwr supernode register ({connection})",
            fix="check that the SuperLink runs with --enable-supernode-auth and that the key was not registered before",
        ) from None


ROLES = ("researcher", "operator")


def issue_user_cert(out: Path | str, role: str, name: str, *, days: int = 365) -> tuple[Path, Path]:
    """A client certificate for a person, signed by the network CA in ``out``: CN = name, OU = role.

    The hub's gate (gate.py) admits Control API calls only with such a certificate and takes the
    requester's name and role from it. Written as ``<name>.<role>.pem`` / ``.key``.
    """
    out = Path(out)
    if role not in ROLES or not _SITE_NAME.match(name):
        raise PolicyError(
            f"bad role or name: {role!r} {name!r}",
            where="certs issue",
            fix=f"role: {', '.join(ROLES)}; name: [A-Za-z0-9_.-]",
        )
    try:
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    except FileNotFoundError:
        raise PolicyError("no CA here", where=str(out), fix="run `fedomop certs create` first") from None
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedomop"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    cert = (
        _certificate(subject, ca_cert.subject, key.public_key(), ca_key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / f"{name}.{role}.pem", out / f"{name}.{role}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private_pem(key, key_path)
    return cert_path, key_path


def holder(cert: Path | str, ca: Path | str) -> tuple[str, str]:
    """(name, role) of a person's certificate, after checking the network CA signed it.

    ``fedomop hub connect`` says who the gate will see before any call is made, so a researcher
    holding the wrong file (another network's, a site's) learns it now rather than from a refusal.
    """
    try:
        certificate = x509.load_pem_x509_certificate(Path(cert).read_bytes())
        authority = x509.load_pem_x509_certificate(Path(ca).read_bytes())
    except ValueError:
        raise PolicyError(
            f"{cert} or {ca} is not a PEM certificate", where="--cert/--ca", fix="pass the .pem files"
        ) from None
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        raise PolicyError(
            f"{cert} was not issued by the CA in {ca}",
            where="--cert",
            fix="ask this network's operator for `fedomop certs issue --role researcher --name <you>`",
        ) from None
    names = {a.oid: str(a.value) for a in certificate.subject}
    role = names.get(NameOID.ORGANIZATIONAL_UNIT_NAME, "")
    if role not in ROLES:
        raise PolicyError(
            f"{cert} carries no person's role (OU {role!r})",
            where="--cert",
            fix=f"use a certificate from `fedomop certs issue` (roles: {', '.join(ROLES)}), not a site's",
        )
    return names.get(NameOID.COMMON_NAME, ""), role
