"""XGBoost's federated allreduce server, fronted so that nothing of fedomop listens on every interface.

Why: ``xgboost.federated.run_federated_server`` (xgboost 3.2) has no host parameter; its C++ tracker binds
``0.0.0.0:<port>`` (``plugin/federated/federated_tracker.cc``), and XGBoost's rabit workers bind every interface
too, so no XGBoost communicator listens on one address only. fedomop's rule is "only 127.0.0.1 in simulation,
the hub's ``--host`` in deployment, never 0.0.0.0".

How: the server runs in a child process inside its own unprivileged user + network namespace
(``unshare --user --map-root-user --net``, util-linux). That namespace has only a loopback interface, so the
server's ``0.0.0.0`` is that loopback and nothing else. The child relays a Unix-domain socket (in a private
0700 folder; Unix sockets are reached through the file system, which the namespace shares) to the server; the
hub relays a TCP listener on ``host`` to that Unix socket. Sites dial ``host:<port>`` exactly as before. The
relays move bytes only, so mutual TLS (``fedomop certs create``) still runs end to end between site and server.

Without user namespaces (``unshare`` missing, or the kernel refuses them, e.g.
``kernel.apparmor_restrict_unprivileged_userns=1``) the server is not started: :func:`require_namespaces`
raises :class:`IsolationError` naming the reason and the fix. ``FEDOMOP_NO_USERNS=1`` simulates that machine.

Run as a module (``python -m fedomop.federated.xgbserver``), this file is the child's side.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import logging
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from fedomop.federated.errors import StudyError
from fedomop.federated.settings import refuse_wildcard_host

log = logging.getLogger(__name__)

NO_USERNS_ENV = "FEDOMOP_NO_USERNS"
UNSHARE = ["--user", "--map-root-user", "--net"]
READY = "ready"
START_TIMEOUT_S = 60.0
CHUNK = 1 << 16
# <linux/sockios.h>, <net/if.h>: read and set an interface's flags; a struct ifreq is 40 bytes
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH22x"
FIX = (
    "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or "
    "kernel.apparmor_restrict_unprivileged_userns=0; install util-linux for `unshare`), or train with "
    "xgboost-bagging, xgboost-cyclic or mlp, which do not use XGBoost's federated server"
)


class IsolationError(StudyError):
    """XGBoost's federated server cannot be isolated from the machine's interfaces, so it is not started."""


@functools.lru_cache(maxsize=4)
def _probe(unshare: str) -> str | None:
    """Why ``unshare`` cannot make a user + network namespace here, or None when it can (asked once per run)."""
    try:
        probe = subprocess.run([unshare, *UNSHARE, "true"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare` failed to run ({exc})"
    if probe.returncode:
        said = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return f"this machine refuses unprivileged user namespaces ({said})"
    return None


def namespace_problem() -> str | None:
    """Why the server cannot run in its own network namespace here, or None when it can."""
    if os.environ.get(NO_USERNS_ENV, "").strip() not in ("", "0"):
        return f"user namespaces are switched off ({NO_USERNS_ENV} is set)"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "util-linux's `unshare` is not on PATH"
    return _probe(unshare)


def require_namespaces(what: str = "histogram XGBoost") -> None:
    """Stop before any site trains when the server would have to listen on every interface."""
    problem = namespace_problem()
    if problem:
        raise IsolationError(
            f"{what} needs XGBoost's federated server, which listens on every interface unless it runs in its "
            f"own network namespace, and {problem}",
            where="xgboost federated server",
            fix=FIX,
        )


# ---- relay: byte pumps between two stream sockets ----------------------------------------------------------


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends, then end ``dst``'s sending side (half-close, as TCP does)."""
    with contextlib.suppress(OSError):
        while data := src.recv(CHUNK):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Both directions at once; both sockets closed when both directions have ended."""
    back = threading.Thread(target=_pump, args=(b, a), daemon=True)
    back.start()
    _pump(a, b)
    back.join()
    a.close()
    b.close()


def _no_delay(sock: socket.socket) -> socket.socket:
    """gRPC sends many small frames; Nagle's delay on a relay hop would stall every allreduce round."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Relay:
    """Accept on ``listener``; splice each connection to a fresh one from ``dial`` (one thread per direction)."""

    def __init__(self, listener: socket.socket, dial: functools.partial[socket.socket]) -> None:
        self.listener = listener
        self.dial = dial
        self.thread = threading.Thread(target=self._serve, daemon=True, name="fedomop-relay")

    def start(self) -> Relay:
        self.thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the relay is stopping
                return
            try:
                upstream = _no_delay(self.dial())
            except OSError as exc:
                log.debug("relay: upstream refused (%s)", exc)
                conn.close()
                continue
            threading.Thread(target=_splice, args=(_no_delay(conn), upstream), daemon=True).start()

    def close(self) -> None:
        """Stop accepting (``shutdown`` wakes the accepting thread); open connections end with their peers."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


def _socket_base() -> str | None:
    """Where the socket's folder goes: the temp folder, unless a long ``TMPDIR`` would make the socket's path
    pass the 107-byte limit of a Unix socket (then /tmp; the folder holds only the socket and the server's log)."""
    return None if len(os.fsencode(tempfile.gettempdir())) <= 64 else "/tmp"


def _dial_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


# ---- hub side ----------------------------------------------------------------------------------------------


def _child_command(world: int, path: str, timeout: int, tls: dict[str, str]) -> list[str]:
    unshare = shutil.which("unshare") or "unshare"
    command = [unshare, *UNSHARE, sys.executable, "-m", __name__, "--world", str(world), "--socket", path]
    command += ["--timeout", str(timeout)]
    for key, value in sorted(tls.items()):
        command += [f"--{key.replace('_', '-')}", value]
    return command


def _wait_ready(child: subprocess.Popen[str], errors: Path) -> None:
    """Until the child says it serves; a child that dies or hangs is reported with what it wrote."""
    assert child.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                line = child.stdout.readline()
                if line.strip() == READY:
                    return
                if not line:
                    break
    said = errors.read_text(errors="replace").strip().splitlines()
    raise IsolationError(
        f"XGBoost's federated server did not start in its network namespace ({said[-1] if said else 'no output'})",
        where="xgboost federated server",
        fix="rerun with FEDOMOP_DEBUG=1 to see its log; " + FIX,
    )


def _stop(child: subprocess.Popen[str]) -> None:
    """Closing its stdin tells the child to leave; then SIGTERM, then SIGKILL."""
    with contextlib.suppress(OSError):
        if child.stdin is not None:
            child.stdin.close()
    for signal_it in (None, child.terminate, child.kill):
        if signal_it is not None:
            with contextlib.suppress(OSError):
                signal_it()
        try:
            child.wait(3)
            break
        except subprocess.TimeoutExpired:
            continue
    if child.stdout is not None:
        child.stdout.close()


class FrontedServer:
    """The namespaced child, started; :attr:`port` waits until it serves and opens the relay on ``host``.

    Waiting only when the port is first needed lets the hub do other work (agree bin edges with the sites)
    while the child starts Python and loads XGBoost."""

    def __init__(self, child: subprocess.Popen[str], path: str, errors: Path, host: str) -> None:
        self.child, self.path, self.errors, self.host = child, path, errors, host
        self.relay: Relay | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            _wait_ready(self.child, self.errors)
            listener = socket.create_server((self.host, 0), family=_family(self.host))
            self.relay = Relay(listener, functools.partial(_dial_unix, self.path)).start()
            self._port = int(listener.getsockname()[1])
        return self._port

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
        _stop(self.child)
        said = self.errors.read_text(errors="replace").strip()
        if said:
            log.debug("xgboost federated server: %s", said)


@contextlib.contextmanager
def federated_server(
    world: int, *, host: str = "127.0.0.1", tls: dict[str, str] | None = None, timeout: int = 600
) -> Iterator[FrontedServer]:
    """XGBoost's federated server for ``world`` ranks, reachable at ``host:<server.port>`` only.

    ``tls``: :func:`fedomop.federated.governance.certs.xgboost_server_tls`'s arguments. Everything started here
    (child, relays, the Unix socket and its folder) is gone when the block ends, by success, error or Ctrl-C.
    A wildcard ``host`` (``0.0.0.0``, ``::``) is refused: the relay listens on one address only."""
    refuse_wildcard_host(host, "xgboost federated server")
    require_namespaces()
    with tempfile.TemporaryDirectory(prefix="fedomop-xgb-", dir=_socket_base()) as folder:  # 0700: this user only
        path = str(Path(folder) / "server.sock")
        errors = Path(folder) / "server.log"
        with errors.open("wb") as err:
            child = subprocess.Popen(
                _child_command(world, path, timeout, tls or {}),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,  # Ctrl-C reaches the hub, which stops the child in order
            )
        server = FrontedServer(child, path, errors, host)
        try:
            yield server
        finally:
            server.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# ---- child side (inside the namespace) ---------------------------------------------------------------------


def loopback_up() -> None:
    """A new network namespace's ``lo`` is down; bring it up (what ``ip link set lo up`` does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack(IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0)))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def _await_listening(port: int) -> None:
    """Until the server accepts on the namespace's loopback (its gRPC server starts on its own thread)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def serve(world: int, path: str, timeout: int, tls: dict[str, str]) -> None:
    """Start the server on the namespace's loopback, relay ``path`` to it, say ready, wait for stdin to end."""
    # the child needs only the tracker: without scikit-learn and pandas (xgboost.compat imports them when it
    # can, and treats their absence as "not installed") XGBoost imports in a quarter of the time
    for optional in ("sklearn", "pandas"):
        sys.modules.setdefault(optional, None)  # type: ignore[arg-type]  # None: "import fails", per importlib
    from xgboost.federated import FederatedTracker

    loopback_up()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    # the tracker itself, not run_federated_server: that one then looks up a routable host address for its
    # workers (worker_args), which a namespace with only a loopback has not
    tracker = FederatedTracker(n_workers=world, port=port, secure=len(tls) == 3, timeout=timeout, **tls)
    tracker.start()
    threading.Thread(target=tracker.wait_for, daemon=True, name="xgboost-tracker").start()
    _await_listening(port)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    Relay(listener, functools.partial(socket.create_connection, ("127.0.0.1", port))).start()
    hub = os.getppid()
    print(READY, flush=True)
    sys.stdin.read()  # the hub closes stdin (or dies) when training is over; daemon threads end with us
    listener.close()
    if os.getppid() != hub:  # the hub was killed: nobody else removes the private folder
        shutil.rmtree(Path(path).parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedomop.federated.xgbserver")
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--timeout", type=int, default=600)
    for key in ("server-key-path", "server-cert-path", "client-cert-path"):
        parser.add_argument(f"--{key}")
    args = parser.parse_args(argv)
    paths = {"server_key_path": args.server_key_path, "server_cert_path": args.server_cert_path}
    paths["client_cert_path"] = args.client_cert_path
    tls = {key: value for key, value in paths.items() if value}
    serve(args.world, args.socket, args.timeout, tls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
