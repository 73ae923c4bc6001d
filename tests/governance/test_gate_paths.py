"""The real gate process on 127.0.0.1 in front of a recording stand-in for the loopback SuperLink.

Red-team finding: the gate decided on the raw request target, so ``/v1/fleet/../control/start-run`` passed as a
Fleet call without a client certificate, and httpx normalised it to ``/v1/control/start-run`` for the SuperLink
(requester stamping and the ledger, which compare the exact path, were skipped). Every spelling of that trick is
sent here byte for byte (raw TLS socket, no normalising client, no certificate): each must be refused and the
SuperLink must never see a request.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedomop.federated.governance.certs import create_credentials, issue_user_cert
from fedomop.federated.governance.gate import request_path
from tests.governance.test_hashing import _zip as _bundle

TRAVERSALS = [
    "/v1/fleet/../control/start-run",
    "/v1/fleet/../control/register-node",
    "/v1/fleet/%2e%2e/control/start-run",
    "/v1/fleet/%2E%2E/control/list-runs",
    "/v1/fleet/..%2fcontrol/start-run",
    "/v1/fleet/..%2Fcontrol/list-nodes",
    "/v1/fleet/..%5ccontrol/start-run",
    "/v1/fleet/..\\control/start-run",
    "/v1/fleet/./../control/start-run",
    "//v1/control/start-run",
    "/v1/fleet//../control/start-run",
    "/v1/fleet/x/../../control/start-run",
    "/v1/fleet/pull-messages/..;/../control/start-run",
    "/v1/fleet/pull-messages?/../../control/start-run",
    "/v1/fleet/pull-messages#/../../control/start-run",
    "/v1/fleet/%2e%2e%2fcontrol%2fstart-run",
    "https://127.0.0.1/v1/fleet/../control/start-run",
    "/V1/CONTROL/start-run",
]


def _port() -> int:
    """A free port in 48000-48999 (this machine's test range)."""
    for port in random.sample(range(48000, 49000), 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 48000-48999")


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", "0") or 0))
        type(self).seen.append((self.path, body))
        reply = b""
        if self.path == "/v1/control/start-run":
            from flwr.proto.control_pb2 import StartRunResponse  # pylint: disable=no-name-in-module

            reply = StartRunResponse(run_id=42).SerializeToString()
        if self.path == "/v1/control/list-runs":  # three runs: alice's, bob's, and one the gate never relayed
            from flwr.proto.control_pb2 import ListRunsResponse  # pylint: disable=no-name-in-module

            listed = ListRunsResponse(now="now")
            for run_id in (101, 102, 103):
                listed.run_dict[run_id].run_id = run_id
                listed.run_dict[run_id].override_config["study"].string = f"secret study of run {run_id}"
            reply = listed.SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


def _listening(process: subprocess.Popen, port: int, timeout: float = 60) -> bool:
    """Whether ``process`` itself (not another test's server on the same port) listens on ``port``."""
    import psutil

    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            if any(
                c.laddr.port == port and c.status == psutil.CONN_LISTEN
                for c in psutil.Process(process.pid).net_connections()
            ):
                return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def _running_gate(work: Path, *extra: str) -> Iterator[dict]:
    """The gate process (options ``extra``) in front of a recording stand-in SuperLink, with a CA and two people."""
    certs = work / "pki"
    create_credentials(certs, ["site_a"])
    issue_user_cert(certs, "researcher", "alice")
    issue_user_cert(certs, "operator", "olga")
    upstream = ThreadingHTTPServer(("127.0.0.1", _port()), _Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    ledger = work / "ledger.jsonl"
    for _attempt in range(5):  # a port probed free may be taken by another test process before the gate binds it
        public = _port()
        command = [sys.executable, "-m", "fedomop.federated.governance.gate", "gate", "--certs", str(certs),
                   "--listen", f"127.0.0.1:{public}", "--upstream", f"127.0.0.1:{upstream.server_port}",
                   "--ledger", str(ledger), "--superlink-insecure", *extra]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if _listening(process, public):
            break
        process.kill()
        process.wait(10)
    else:
        raise AssertionError(
            f"the gate did not listen on a free port: {process.stdout.read() if process.stdout else ''}"
        )
    try:
        yield {"port": public, "certs": certs, "ledger": ledger, "seen": _Recorder.seen}
    finally:
        process.terminate()
        process.wait(10)
        upstream.shutdown()
        upstream.server_close()


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    with _running_gate(tmp_path_factory.mktemp("gate")) as running:
        yield running


def _send(port: int, certs: Path, target: str, body: bytes = b"", cert: str | None = None) -> bytes:
    """One request, the target exactly as given, over TLS; the answer's head and its whole (de-chunked) body."""
    tls = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    if cert:
        tls.load_cert_chain(certs / f"{cert}.pem", certs / f"{cert}.key")
    with tls.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname="127.0.0.1") as s:
        head = f"POST {target} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/protobuf\r\n"
        s.sendall(f"{head}content-length: {len(body)}\r\n\r\n".encode("latin-1") + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        fields = dict(line.split(b": ", 1) for line in head_bytes.lower().split(b"\r\n")[1:] if b": " in line)
        if b"content-length" in fields:
            while len(rest) < int(fields[b"content-length"]):
                rest += s.recv(65536)
            return head_bytes + b"\r\n\r\n" + rest
        while not rest.endswith(b"0\r\n\r\n"):
            rest += s.recv(65536)
        out = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            out, rest = out + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
        return head_bytes + b"\r\n\r\n" + out


@pytest.mark.parametrize("target", TRAVERSALS)
def test_a_path_trick_without_a_certificate_never_reaches_the_superlink(gate, target):
    from flwr.proto.control_pb2 import StartRunRequest  # pylint: disable=no-name-in-module

    before = len(gate["seen"])
    answer = _send(gate["port"], gate["certs"], target, StartRunRequest().SerializeToString())
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith((b"HTTP/1.1 400", b"HTTP/1.1 403")), answer[:300]
    assert gate["seen"][before:] == [], f"{target} reached the SuperLink as {gate['seen'][before:]}"
    assert request_path(target) is None


def test_plain_paths_still_pass_and_a_start_run_is_stamped_and_recorded(gate):
    from flwr.proto.control_pb2 import StartRunRequest  # pylint: disable=no-name-in-module

    before = len(gate["seen"])
    fleet = _send(gate["port"], gate["certs"], "/v1/fleet/pull-messages", b"node")
    assert fleet.startswith(b"HTTP/1.1 200"), fleet[:300]
    anonymous = _send(gate["port"], gate["certs"], "/v1/control/start-run", b"")
    assert anonymous.startswith(b"HTTP/1.1 403") and b"client certificate" in anonymous
    request = StartRunRequest()
    request.override_config["requester"].string = "mallory"
    started = _send(
        gate["port"], gate["certs"], "/v1/control/start-run", request.SerializeToString(), "alice.researcher"
    )
    assert started.startswith(b"HTTP/1.1 200"), started[:300]
    seen = gate["seen"][before:]
    assert [path for path, _ in seen] == ["/v1/fleet/pull-messages", "/v1/control/start-run"]
    assert StartRunRequest.FromString(seen[1][1]).override_config["requester"].string == "alice"
    entry = {"event": "run", "run_id": 42, "requester": "alice", "role": "researcher"}
    deadline = time.monotonic() + 20  # written once the answer has gone out
    while entry not in (runs := [json.loads(line) for line in gate["ledger"].read_text().splitlines()]):
        assert time.monotonic() < deadline, runs
        time.sleep(0.1)


def test_request_path_accepts_only_plain_lower_case_segments():
    assert request_path("/v1/control/start-run") == "/v1/control/start-run"
    assert request_path("/v1/fleet/pull-messages") == "/v1/fleet/pull-messages"
    for bad in ("/v1/fleet/../control/x", "/v1/./fleet/x", "/v1//fleet/x", "/v1/fleet/x/", "v1/fleet/x", "/", ""):
        assert request_path(bad) is None, bad


def test_a_researcher_lists_only_their_own_runs(gate):
    from flwr.proto.control_pb2 import ListRunsResponse  # pylint: disable=no-name-in-module

    with gate["ledger"].open("a") as ledger:
        for run_id, name in ((101, "alice"), (102, "bob")):
            ledger.write(json.dumps({"event": "run", "run_id": run_id, "requester": name}) + "\n")

    def listed(cert: str) -> set[int]:
        answer = _send(gate["port"], gate["certs"], "/v1/control/list-runs", b"", cert)
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer[:300]
        return set(ListRunsResponse.FromString(rest).run_dict)

    assert listed("alice.researcher") == {101}
    assert listed("olga.operator") == {101, 102, 103}


APP = {"pyproject.toml": b'[project]\nname = "app"\n', "app/__init__.py": b"", "app/server.py": b"X = 1\n"}


def _start_run(content: bytes) -> bytes:
    from flwr.proto.control_pb2 import StartRunRequest  # pylint: disable=no-name-in-module

    request = StartRunRequest()
    if content:
        request.fab.content = content
    return request.SerializeToString()


def test_a_start_run_whose_bundle_holds_compiled_code_never_reaches_the_superlink(gate):
    """Red team: an approved bundle plus fedomop/__init__.pyc ran on the hub (the ServerApp imports the bundle
    first). The gate refuses a bundle with compiled code from a certified researcher too, before the SuperLink."""
    before = len(gate["seen"])
    evil = _bundle({**APP, "fedomop/__init__.pyc": b"\x00compiled"})
    answer = _send(gate["port"], gate["certs"], "/v1/control/start-run", _start_run(evil), "alice.researcher")
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    assert b"compiled" in answer and gate["seen"][before:] == []
    clean = _send(gate["port"], gate["certs"], "/v1/control/start-run", _start_run(_bundle(APP)), "alice.researcher")
    assert clean.startswith(b"HTTP/1.1 200"), clean[:300]


def test_with_approved_apps_the_hub_runs_only_a_listed_bundle(tmp_path):
    """`hub start --approved-app HASH`: a bundle whose hash is not listed, or a run without a bundle to check, is
    refused; the listed one passes. The hash is the one `fedomop governance hash` gives (bundle_hash)."""
    from fedomop.federated.governance.approval import bundle_hash

    approved, other = _bundle(APP), _bundle({**APP, "app/server.py": b"X = 2\n"})
    with _running_gate(tmp_path, "--approved-app", bundle_hash(approved)) as running:
        port, certs = running["port"], running["certs"]
        before = len(running["seen"])
        refused = _send(port, certs, "/v1/control/start-run", _start_run(other), "alice.researcher")
        assert refused.startswith(b"HTTP/1.1 403") and b"not one the hub operator approved" in refused, refused[:300]
        empty = _send(port, certs, "/v1/control/start-run", _start_run(b""), "alice.researcher")
        assert empty.startswith(b"HTTP/1.1 403"), empty[:300]
        assert running["seen"][before:] == []
        passed = _send(port, certs, "/v1/control/start-run", _start_run(approved), "alice.researcher")
        assert passed.startswith(b"HTTP/1.1 200"), passed[:300]
        assert [path for path, _ in running["seen"][before:]] == ["/v1/control/start-run"]


def _raw(port: int, certs: Path, data: bytes) -> bytes:
    """Bytes exactly as given over TLS (no certificate); the answer until the gate closes the connection."""
    tls = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    with tls.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname="127.0.0.1") as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


SMUGGLING = {
    "folded header": b"POST /v1/fleet/pull-messages HTTP/1.1\r\nhost: x\r\n content-length: 5\r\n\r\n",
    "both lengths": (
        b"POST /v1/fleet/pull-messages HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"
        b"0\r\n\r\nPOST /v1/control/start-run HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
    ),
    "two different lengths": b"POST /v1/fleet/pull-messages HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 9\r\n\r\n",
    "a space before the colon": b"POST /v1/fleet/pull-messages HTTP/1.1\r\ncontent-length : 0\r\n\r\n",
    "not a length": b"POST /v1/fleet/pull-messages HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
    "other coding": b"POST /v1/fleet/pull-messages HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"POST /v1/fleet/pull-messages HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n\r\n",
    "too large": b"POST /v1/fleet/pull-messages HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n",
    "no version": b"POST /v1/fleet/pull-messages\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", SMUGGLING.values(), ids=list(SMUGGLING))
def test_ambiguous_framing_is_answered_400_and_never_relayed(gate, request_bytes):
    """RFC 9112 section 6.3: a message framed two ways (Content-Length and chunked, two lengths, an obs-folded
    header) is how a request is smuggled past a proxy; the gate answers 400, logs it, relays nothing (a folded
    header used to raise inside the gate)."""
    before = len(gate["seen"])
    answer = _raw(gate["port"], gate["certs"], request_bytes)
    assert answer.startswith(b"HTTP/1.1 400") and b"bad request" in answer, answer[:300]
    assert gate["seen"][before:] == []
