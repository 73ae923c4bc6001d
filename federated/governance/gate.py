"""The hub's front door: mutual TLS on the public address, the SuperLink itself on loopback only.

In this Flower release the SuperLink serves its Fleet, Control and Runtime APIs over HTTP on
one port, and the Control API (``flwr run``, ``flwr ls``, ``flwr stop``, ``flwr supernode
register``) has no authentication of its own. ``fedomop hub start`` therefore binds the
SuperLink to 127.0.0.1 and puts this gate on the public address. It serves TLS with the hub
certificate and asks for a client certificate signed by the network CA (``fedomop certs issue``):

* ``/v1/fleet/*`` (SuperNodes) passes without a client certificate: Flower's SuperNode cannot
  present one, and ``--enable-supernode-auth`` already signs every Fleet request with a
  registered node key;
* ``/v1/control/*`` needs a certificate: role ``researcher`` may submit, list, stop and follow
  runs; only ``operator`` may register nodes or change federations;
* anything else (the Runtime API of ServerApps) is refused from outside;
* a request target that is not a plain path (``.``/``..`` segments, ``%``-escapes, backslashes, ``//``,
  a query or fragment, upper case, an absolute URL) is refused before any of this is decided
  (:func:`request_path`): the path the gate decides on is exactly the path it forwards, so no HTTP client
  or server below can normalise ``/v1/fleet/../control/start-run`` into a Control call the gate never saw.

On ``start-run`` the gate overwrites ``requester`` in the run config with the certificate's
name and appends ``{run_id, requester}`` to its ledger (JSONL), so a site's audit log names the
person the certificate names, never what the researcher typed. A researcher's ``list-runs`` answer
keeps only the runs the ledger gives to that researcher (an operator sees every run).

``connect`` is the researcher's side: a plain listener on 127.0.0.1 whose bytes go to the gate
inside TLS with the researcher's certificate, so the unmodified ``flwr`` CLI works through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance.approval import REQUESTER_KEY

LEDGER_ENV = "FEDOMOP_GATE_LEDGER"
"""Set by ``fedomop hub start`` for the SuperLink and so for every ServerApp it spawns."""

FLEET = "/v1/fleet/"
CONTROL = "/v1/control/"
RESEARCHER_CALLS = {
    f"{CONTROL}{name}"
    for name in (
        "start-run", "list-runs", "stop-run", "stream-logs", "stream-run-events", "pull-artifacts",
        "list-run-series", "get-run-series", "list-run-series-events", "list-nodes", "list-federations",
        "show-federation", "list-apps",
    )
}  # fmt: skip
PLAIN_PATH = re.compile(r"(?:/[a-z0-9][a-z0-9-]*)+")
"""Every Flower route is lower-case words joined by hyphens (``/v1/control/start-run``): nothing to normalise."""
LIST_RUNS = f"{CONTROL}list-runs"
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade", "host"}


@dataclass(frozen=True)
class Caller:
    name: str | None
    role: str | None


def caller_of(peercert: dict | None) -> Caller:
    """Name (CN) and role (OU) of a verified client certificate; both None without one."""
    if not peercert:
        return Caller(None, None)
    fields = {key: value for rdn in peercert.get("subject", ()) for key, value in rdn}
    return Caller(fields.get("commonName"), fields.get("organizationalUnitName"))


def request_path(target: str) -> str | None:
    """The path of a request target when it is a plain path, else None (refused with 400).

    Plain means: segments of lower-case letters, digits and hyphens, nothing else. That leaves out every
    spelling a client, proxy or server could read as another path: ``.`` and ``..`` segments, ``%2e``/``%2f``/
    ``%5c`` (any ``%``), backslashes, empty segments (``//``), ``;`` parameters, a query or fragment, and an
    absolute-form target (``https://host/...``). Flower's own clients send nothing else."""
    return target if PLAIN_PATH.fullmatch(target) else None


def allowed(path: str, caller: Caller) -> str | None:
    """None when ``caller`` may call ``path``, else the reason for refusing."""
    if path.startswith(FLEET):
        return None
    if not path.startswith(CONTROL):
        return "not served on the public address"
    if caller.name is None:
        return "the Control API needs a client certificate issued by the network operator"
    if caller.role == "operator" or (caller.role == "researcher" and path in RESEARCHER_CALLS):
        return None
    return f"role {caller.role!r} may not call {path.removeprefix(CONTROL)}"


def _decoded(message: Any, body: bytes, content_type: str) -> Any:
    """``body`` parsed into the protobuf ``message`` (Flower's Control API speaks binary protobuf or its JSON form)."""
    from google.protobuf import json_format

    return json_format.Parse(body, message) if "json" in content_type else message.FromString(body)


def _encoded(message: Any, content_type: str) -> bytes:
    from google.protobuf import json_format

    return json_format.MessageToJson(message).encode() if "json" in content_type else message.SerializeToString()


def app_refusal(request: Any, approved: frozenset[str] | None) -> str | None:
    """Why the hub must not run the app bundle of this StartRunRequest (None: it may).

    The hub's ServerApp imports the submitted bundle with the bundle's folder first on ``sys.path``, so the
    researcher's bundle is code that runs on the hub: one holding compiled code (``.pyc``, ``.so``, ...) is
    never run (nobody can review it, and it would be imported before the sources), and with ``approved`` (the
    operator's ``--approved-app`` hashes) only a bundle whose :func:`~approval.bundle_hash` is listed runs."""
    from fedomop.federated.governance.approval import bundle_hash

    content = bytes(request.fab.content)
    if not content:
        return "the hub runs only apps submitted as a bundle it can check" if approved is not None else None
    try:
        digest = bundle_hash(content)
    except PolicyError as refused:
        return f"app bundle refused: {refused.message}"
    if approved is not None and digest not in approved:
        return f"app {digest} is not one the hub operator approved (fedomop hub start --approved-app)"
    return None


def own_runs_only(body: bytes, content_type: str, mine: set[int]) -> bytes:
    """A ListRunsResponse without the runs not in ``mine`` (another researcher's study, settings and name)."""
    from flwr.proto.control_pb2 import ListRunsResponse  # pylint: disable=no-name-in-module

    response = _decoded(ListRunsResponse(), body, content_type)
    for run_id in [run for run in response.run_dict if run not in mine]:
        del response.run_dict[run_id]
    return _encoded(response, content_type)


def _run_id(body: bytes, content_type: str) -> int | None:
    from flwr.proto.control_pb2 import StartRunResponse  # pylint: disable=no-name-in-module

    with contextlib.suppress(Exception):
        return int(_decoded(StartRunResponse(), body, content_type).run_id)
    return None


MAX_BODY = 1 << 30
"""The largest request body the gate reads (1 GiB; a model update or app bundle is far smaller)."""
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REQUEST_LINE = re.compile(r"([A-Z]+) (\S+) HTTP/1\.[01]")


class BadRequest(Exception):
    """A request the gate does not parse (answered 400, connection closed): framing it could read one way and
    the SuperLink another is how requests are smuggled past a proxy (RFC 9112 section 6.3)."""


def _parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1")[:-4].split("\r\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        raise BadRequest("malformed request line")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):  # obs-fold (a leading space), no colon, a space before it
            raise BadRequest("malformed header line")
        headers.append((name, value.strip(" \t")))
    return request_line.group(1), request_line.group(2), headers


def _body_length(headers: list[tuple[str, str]]) -> int | None:
    """The Content-Length (None: chunked); refuses both, several different or non-decimal lengths, other codings."""
    lengths = {v for k, v in headers if k.lower() == "content-length"}
    codings = [v.strip().lower() for k, v in headers if k.lower() == "transfer-encoding"]
    if codings:
        if lengths or codings != ["chunked"]:
            raise BadRequest("Transfer-Encoding other than one 'chunked', or with a Content-Length")
        return None
    if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
        raise BadRequest("several or malformed Content-Length values")
    length = int(lengths.pop()) if lengths else 0
    if length > MAX_BODY:
        raise BadRequest("request body too large")
    return length


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    method, target, headers = _parse_head(head)
    length = _body_length(headers)
    if length is not None:
        return method, target, headers, await reader.readexactly(length)
    body = b""
    while True:
        size_line = (await reader.readuntil(b"\r\n")).strip().split(b";")[0]
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", size_line):
            raise BadRequest("malformed chunk size")
        size = int(size_line, 16)
        if len(body) + size > MAX_BODY:
            raise BadRequest("request body too large")
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise BadRequest("malformed chunk")
        if size == 0:
            return method, target, headers, body
        body += chunk[:-2]


def _reply(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    data = text.encode()
    writer.write(
        f"HTTP/1.1 {status} Refused\r\ncontent-type: text/plain\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data
    )


class Gate:
    """The mTLS gate: ``public`` (host, port) in front of the SuperLink at ``upstream`` (loopback)."""

    def __init__(
        self,
        certs: Path | str,
        upstream: str,
        ledger: Path | str,
        *,
        superlink_tls: bool = True,
        approved_apps: frozenset[str] | None = None,
    ) -> None:
        certs = Path(certs)
        self.approved_apps = approved_apps
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs / "ca.crt"))
        self.tls.load_cert_chain(certs / "server.pem", certs / "server.key")
        self.tls.verify_mode = ssl.CERT_OPTIONAL  # Fleet calls come without one; Control calls are checked below
        scheme = "https" if superlink_tls else "http"
        verify = str(certs / "ca.crt") if superlink_tls else False
        self.upstream = httpx.AsyncClient(base_url=f"{scheme}://{upstream}", verify=verify, timeout=None)
        self.ledger = Path(ledger)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caller = caller_of(writer.get_extra_info("peercert"))
        try:
            while (request := await _read_request(reader)) is not None:
                await self._one(caller, *request, writer)
        except BadRequest as bad:
            self._log({"event": "refused", "caller": caller.name, "reason": f"bad request: {bad}"})
            with contextlib.suppress(Exception):
                _reply(writer, 400, f"bad request: {bad}")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _one(  # noqa: PLR0913 - one parsed request
        self, caller: Caller, method: str, target: str, headers: list, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        path = request_path(target)
        if path is None:
            malformed = "the request target is not a plain path (dot segments, escapes, //, a query)"
            self._log({"event": "refused", "path": target[:200], "caller": caller.name, "reason": malformed})
            _reply(writer, 400, malformed)
            await writer.drain()
            return
        reason = allowed(path, caller)
        if reason:
            self._log({"event": "refused", "path": path, "caller": caller.name, "reason": reason})
            _reply(writer, 403, reason)
            await writer.drain()
            return
        content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
        if path == f"{CONTROL}start-run":
            from flwr.proto.control_pb2 import StartRunRequest  # pylint: disable=no-name-in-module

            try:
                request = _decoded(StartRunRequest(), body, content_type)
            except Exception:  # noqa: BLE001 - any undecodable request is refused, whatever the decoder raised
                refusal: str | None = "not a StartRunRequest"
            else:
                refusal = app_refusal(request, self.approved_apps)
            if refusal:
                self._log({"event": "refused", "path": path, "caller": caller.name, "reason": refusal})
                _reply(writer, 403, refusal)
                await writer.drain()
                return
            # the requester the sites' audit logs name is the certificate's, whatever was sent
            request.override_config[REQUESTER_KEY].string = str(caller.name)
            body = _encoded(request, content_type)
        forward = [(k, v) for k, v in headers if k.lower() not in _HOP]
        upstream = self.upstream.build_request(method, path, headers=forward, content=body)  # what was decided on
        if path == LIST_RUNS and caller.role != "operator":
            await self._own_runs(caller, upstream, writer)
            return
        response = await self.upstream.send(upstream, stream=True)
        try:
            head = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
            head += [f"{k}: {v}" for k, v in response.headers.multi_items() if k.lower() not in _HOP]
            head += ["transfer-encoding: chunked", "", ""]
            writer.write("\r\n".join(head).encode("latin-1"))
            collected = b""
            async for chunk in response.aiter_raw():
                if path == f"{CONTROL}start-run":
                    collected += chunk
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            await response.aclose()
        if path == f"{CONTROL}start-run" and response.status_code == 200:
            run_id = _run_id(collected, response.headers.get("content-type", ""))
            self._log({"event": "run", "run_id": run_id, "requester": caller.name, "role": caller.role})

    async def _own_runs(self, caller: Caller, upstream: httpx.Request, writer: asyncio.StreamWriter) -> None:
        """list-runs for a researcher: only the runs the ledger says they submitted (whole answer, re-encoded)."""
        response = await self.upstream.send(upstream)  # read whole and decoded (content-encoding removed)
        content_type = response.headers.get("content-type", "")
        body = response.content
        if response.status_code == 200:
            mine = {run for run, name in runs_of(self.ledger).items() if name == caller.name}
            body = own_runs_only(body, content_type, mine)
        skip = _HOP | {"content-encoding"}
        head = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
        head += [f"{k}: {v}" for k, v in response.headers.multi_items() if k.lower() not in skip]
        head += [f"content-length: {len(body)}", "", ""]
        writer.write("\r\n".join(head).encode("latin-1") + body)
        await writer.drain()

    def _log(self, entry: dict) -> None:
        with open(self.ledger, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")

    async def serve(self, host: str, port: int) -> None:
        server = await asyncio.start_server(self.handle, host, port, ssl=self.tls)
        async with server:
            await server.serve_forever()


def runs_of(ledger: Path | str) -> dict[int, str]:
    """run_id -> requester, from the gate's ledger."""
    path = Path(ledger)
    if not path.exists():
        return {}
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {e["run_id"]: e["requester"] for e in entries if e.get("event") == "run" and e.get("run_id") is not None}


def requester_of_run(run_id: int, stamped: str, declared: str = "", *, wait_s: float = 15.0) -> dict[str, str]:
    """Who submitted ``run_id``, for result.json and the model card: never a name the researcher typed.

    On a governed hub (``FEDOMOP_GATE_LEDGER`` set) the gate's ledger is the authority; the entry
    is written when the gate relays the start-run answer, so a freshly spawned ServerApp waits a
    moment for it. A run missing from the ledger reached the SuperLink without the gate (from the
    hub machine itself) and is refused. Without a gate the name is reported as unverified.
    """
    ledger = os.environ.get(LEDGER_ENV)
    if not ledger:  # an ungoverned hub: say what was claimed, and that nobody checked it
        if stamped:
            return {"name": stamped, "source": "run config, unverified (no gate: ungoverned hub)"}
        return {"name": declared or "unauthenticated", "source": "training settings, unverified (no gate)"}
    deadline = time.monotonic() + wait_s
    while (name := runs_of(ledger).get(run_id)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if name is None:
        raise PolicyError(
            f"run {run_id} is not in the gate's ledger {ledger}: it was not submitted through the gate",
            where="hub",
            fix="submit through the hub's public address with an issued certificate (`fedomop hub connect`)",
        )
    if stamped and stamped != name:
        raise PolicyError(
            f"run {run_id}: the run config names {stamped!r}, the gate's ledger {name!r}",
            where=f"hub: {ledger}",
            fix="submit through the gate only; the SuperLink's loopback port is for the hub operator",
        )
    return {"name": name, "source": "gate ledger (client certificate)"}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


async def connect(gate: str, listen_port: int, cert: Path | str, key: Path | str, ca: Path | str) -> None:
    """The researcher's side: 127.0.0.1:listen_port (plain) -> gate (TLS with the researcher's certificate)."""
    tls = ssl.create_default_context(cafile=str(ca))
    tls.load_cert_chain(str(cert), str(key))
    host, port = gate.rsplit(":", 1)

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port), ssl=tls)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(tunnel, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="fedomop.federated.governance.gate")
    sub = parser.add_subparsers(dest="mode", required=True)
    gate = sub.add_parser("gate")
    gate.add_argument("--certs", required=True)
    gate.add_argument("--listen", required=True, help="host:port (public)")
    gate.add_argument("--upstream", required=True, help="the SuperLink on loopback, host:port")
    gate.add_argument("--ledger", required=True)
    gate.add_argument("--superlink-insecure", action="store_true")
    gate.add_argument("--approved-app", action="append", help="app hash the hub may run (repeat; none: any)")
    link = sub.add_parser("connect")
    link.add_argument("--gate", required=True)
    link.add_argument("--port", type=int, required=True)
    link.add_argument("--cert", required=True)
    link.add_argument("--key", required=True)
    link.add_argument("--ca", required=True)
    args = parser.parse_args(argv)
    if args.mode == "gate":
        host, port = args.listen.rsplit(":", 1)
        approved = frozenset(args.approved_app) if args.approved_app else None
        front = Gate(
            args.certs, args.upstream, args.ledger, superlink_tls=not args.superlink_insecure, approved_apps=approved
        )
        asyncio.run(front.serve(host, int(port)))
    else:
        asyncio.run(connect(args.gate, args.port, args.cert, args.key, args.ca))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
