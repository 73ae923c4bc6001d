"""The site's own executor: checks a run's app bundle before anything of it runs, then runs the INSTALLED app.

Flower's stock ``flwr-clientapp`` unpacks the submitted app bundle (FAB), puts it first on
``sys.path`` and imports it, so any check inside a ClientApp runs after the submitted code
already did. A site therefore starts its SuperNode with ``--isolation process`` (no executor of
Flower's own is spawned) and runs this module beside it (``fedomop site executor``):

* ``serve`` polls the SuperNode's loopback Runtime API for ClientApp tasks (the SuperExec
  protocol, authenticated with the shared ``--superexec-auth-secret-file`` when given) and runs
  each task in its own process, forked from a server that preloaded the installed ClientApp;
* ``task`` pulls the message, run and FAB; hashes the FAB's bytes in memory
  (:func:`~fedomop.federated.governance.approval.bundle_hash`, nothing unpacked, nothing
  imported); checks (app hash, study digest, requester) against the site policy; then either
  answers with the site's installed, pinned fedomop ClientApp or refuses with an audited error.

The requester is the name the hub's mTLS gate wrote into the run's config from the client
certificate (see gate.py); the submitted code never chooses it. This uses Flower's Runtime
API client internals, hence the exact ``flwr`` pin in pyproject.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.process
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import approval

if TYPE_CHECKING:
    from flwr.supercore.runtime import RuntimeHttpClient

CLIENT_APP_TASK = "flwr-clientapp"
ERROR_CODE_REFUSED = 403
ERROR_CODE_WALL_TIME = 408
HARD_KILL_GRACE_S = 30.0
"""A task still running this long after its wall-time budget did not return to Python (a native call that
ignores the alarm): the executor kills its process; the hub then counts the site as not answering."""


PRELOAD = [
    "fedomop.federated.client_app",
    "fedomop.federated.executor",
    "duckdb_engine",  # SQLAlchemy's DuckDB dialect, loaded by entry point on a task's first connect (0.15 s)
    "xgboost",  # imported by every XGBoost message's model code (1-2 s each, measured)
]
"""Installed, pinned modules the fork server imports once, so no task pays for them. None of them runs Python
threads at import (the native threads present -- jemalloc's, polars' cleaner, OpenBLAS's pool -- are fork-aware;
XGBoost's OpenMP threads start with the first training, in the task). torch is left out: only MLP studies need
it, and it would add ~180 MiB to every site's fork server."""
CACHE_IDLE_S = 6 * 3600.0
"""A run's cached feature matrix is dropped after this long unused (a run's next message comes within the
hub's round timeout; the folder itself is removed when the executor stops)."""


class WallTimeExceeded(PolicyError):
    """A message ran past the site's ``limits.wall_time_s``; its training was stopped."""


class _Expired(BaseException):
    """Raised by the alarm: a BaseException, so no ``except Exception`` in model or library code swallows it."""


@contextlib.contextmanager
def wall_time_bound(seconds: float, site: str) -> Iterator[None]:
    """Raise :class:`WallTimeExceeded` in this task once ``seconds`` have passed, whatever the model.

    An interval timer's SIGALRM interrupts Python code at its next bytecode: the MLP's batches,
    XGBoost's boosting rounds (each returns to Python), feature building between queries. Only the
    main thread of a task process runs the app, so the signal reaches it; the executor's hard kill
    covers a native call that never returns (see :data:`HARD_KILL_GRACE_S`).
    """

    def expire(signum: int, frame: object) -> None:
        raise _Expired

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Expired:
        raise WallTimeExceeded(
            f"{site}: the message exceeded the site's wall-time budget of {seconds:g} s; its training was stopped",
            where="site policy: limits.wall_time_s",
            fix="ask for fewer rounds, epochs or trees per message, or ask the site for a larger wall_time_s",
        ) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def wall_time_of(policy_path: str) -> float:
    """The site's per-message budget (policy ``limits.wall_time_s``)."""
    from fedomop.federated.governance.policy import load_policy

    return float(load_policy(policy_path).limits.wall_time_s)


def _client(address: str, *, token: str | None = None, secret: bytes | None = None) -> RuntimeHttpClient:
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp" if token else "SuperExec")]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    if secret:
        interceptors.append(
            SuperExecAuthHttpInterceptor(
                master_secret=secret, protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})
            )
        )
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None, interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )  # fmt: skip


def _loopback(address: str) -> None:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"fedomop executor: the Runtime API must be on loopback, got {address}")


def _task_starter() -> multiprocessing.context.BaseContext:
    """Each task in a fresh child of a fork server that has imported the *installed* ClientApp once.

    Spawning ``python -m ... task`` per message paid fedomop's and its libraries' import for every
    message (seconds each on a busy host, several messages per run). The fork server is a clean,
    single-threaded process started from this one; it preloads only installed, pinned code (never a
    submitted bundle), and every task still gets its own process and its own ``approval.ADMITTED``.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()  # pay the imports now, before the first task waits on them
    return context


def serve(address: str, policy: str, *, secret_file: str | None = None, poll_s: float = 0.5) -> None:
    """Poll for ClientApp tasks and run each in its own process (until killed)."""
    _loopback(address)
    secret = Path(secret_file).read_bytes() if secret_file else None
    client = _client(address, secret=secret)
    with _feature_cache() as cache:
        starter = _task_starter()  # after the cache folder is in the environment: the fork server passes it on
        _serve_tasks(client, starter, address, policy, cache, poll_s)


@contextlib.contextmanager
def _feature_cache() -> Iterator[Path]:
    """A private folder for the tasks' per-run feature matrices (feature_cache), removed when the executor stops,
    also on SIGTERM (``fedomop site start`` stops it so). The executor holds a lock on the folder's ``.owner`` file
    for its whole life: that, not its pid, tells another executor starting later that the folder is still in use
    (a pid means nothing across containers sharing the folder)."""
    from fedomop.federated import feature_cache

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    root = cache_root()
    remove_orphaned_caches(root)
    folder, owner = _owned_folder(root)
    os.environ[feature_cache.CACHE_ENV] = str(folder)
    print(f"fedomop executor: a run's feature matrix is kept in {folder} (removed when this site stops)", flush=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        owner.close()
        signal.signal(signal.SIGTERM, previous)


CACHE_PREFIX = "fedomop-features-"
OWNER_FILE = ".owner"


def cache_root() -> Path:
    """The folder for the cache: ``$TMPDIR`` when set. Python's tempfile silently falls back to /tmp when TMPDIR
    is unusable, which would put row-level features outside the volume the operator chose: refused instead."""
    from fedomop.harmonize.ground.errors import FedomopError

    named = os.environ.get("TMPDIR")
    if named and not (os.path.isdir(named) and os.access(named, os.W_OK | os.X_OK)):
        raise FedomopError(
            f"TMPDIR={named} is not a folder this user can write, and the site keeps a run's feature matrix there",
            where="environment variable TMPDIR",
            fix="create the folder (on the site's encrypted data volume) or unset TMPDIR to use the system's",
        )
    root = Path(named) if named else Path(tempfile.gettempdir())
    if len(os.fsencode(root)) > MAX_TMPDIR_BYTES:  # the fork server's Unix socket lives in a folder inside it
        raise FedomopError(
            f"TMPDIR={root} is {len(os.fsencode(root))} bytes long: the executor's Unix socket inside it would pass "
            f"the system's 107-byte limit",
            where="environment variable TMPDIR",
            fix=f"use a folder path of at most {MAX_TMPDIR_BYTES} bytes (e.g. a short mount point or a symlink)",
        )
    return root


MAX_TMPDIR_BYTES = 64
"""Python's multiprocessing puts the fork server's socket at ``$TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX``
(32 bytes more), and a Unix socket path has at most 107 bytes: a margin kept for other libraries' sockets."""


def _owned_folder(root: Path) -> tuple[Path, io.BufferedWriter]:
    """Make the cache folder, lock its owner file, and only then give it the name other executors scan for."""
    staging = Path(tempfile.mkdtemp(prefix=".fedomop-staging-", dir=root))  # mode 0700
    owner = open(staging / OWNER_FILE, "wb")  # noqa: SIM115 - held open (and locked) for the executor's life
    fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    folder = Path(tempfile.mkdtemp(prefix=f"{CACHE_PREFIX}{os.getpid()}-", dir=root))
    os.replace(staging, folder)  # onto the empty folder just made: atomic, and the name is unique
    return folder, owner


def remove_orphaned_caches(temporary: Path) -> list[Path]:
    """Remove this user's cache folders whose executor is gone (killed with SIGKILL, or the machine lost power),
    so feature matrices never outlive their executor by more than the next start. A live executor holds the lock
    on its folder's owner file; a folder whose lock can be taken has none."""
    removed = []
    for folder in temporary.glob(f"{CACHE_PREFIX}*"):
        try:
            if folder.stat().st_uid != os.getuid() or not _unowned(folder / OWNER_FILE):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _unowned(owner: Path) -> bool:
    try:
        with open(owner, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its executor is running
    except FileNotFoundError:
        return True  # a folder without an owner file is not one a running executor made
    return True


def _serve_tasks(
    client: RuntimeHttpClient,
    starter: multiprocessing.context.BaseContext,
    address: str,
    policy: str,
    cache: Path,
    poll_s: float,
) -> None:
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module

    from fedomop.federated import feature_cache
    from fedomop.federated.executor import run_task as task  # by its module name, also when run as __main__

    children: dict[multiprocessing.process.BaseProcess, float] = {}  # task process -> when to kill it
    pruned_at = time.monotonic()
    while True:
        if time.monotonic() - pruned_at > 60:
            feature_cache.prune(cache, max(CACHE_IDLE_S, 2 * _budget(policy)))
            pruned_at = time.monotonic()
        for child, kill_at in list(children.items()):
            if child.is_alive() and time.monotonic() > kill_at:
                print(f"fedomop executor: task {child.pid} ignored its wall-time budget; killed", file=sys.stderr)
                child.kill()
            if not child.is_alive():
                child.join()
                del children[child]
        answer = client.AcquireTask(AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK]))
        if answer.HasField("task") and answer.token:
            child = starter.Process(target=task, args=(address, answer.token, policy), daemon=False)  # type: ignore[attr-defined]
            child.start()
            children[child] = time.monotonic() + _budget(policy) + HARD_KILL_GRACE_S
        time.sleep(poll_s)


def _budget(policy_path: str) -> float:
    try:
        return wall_time_of(policy_path)
    except Exception:  # noqa: BLE001 - an unreadable policy refuses the task itself; the default bounds it here
        from fedomop.federated.governance.policy import SettingsLimits

        return float(SettingsLimits().wall_time_s)


def _refuse(policy_path: str, request: approval.Request, reason: str, outcome: str = "refused") -> None:
    from fedomop.federated.governance.enforce import audit
    from fedomop.federated.governance.policy import load_policy

    audit(load_policy(policy_path), requester=request.requester, study=request.study, app_hash=request.app_sha256,
          action="execute", outcome=outcome, sent={}, reason=reason, study_digest=request.study_digest)  # fmt: skip


def admit(policy_path: str, fab_content: bytes, study_text: str, requester: str) -> approval.Request:
    """The approval decision for one task (PolicyError when refused, after auditing the refusal)."""
    from fedomop.federated.errors import PolicyError
    from fedomop.federated.governance.enforce import study_name
    from fedomop.federated.governance.policy import load_policy
    from fedomop.federated.study import parse_study
    from fedomop.harmonize.ground.errors import FedomopError

    try:
        app_sha = approval.bundle_hash(fab_content)
    except PolicyError as error:  # not a zip, or compiled code inside: no approval can name it
        app_sha = hashlib.sha256(fab_content).hexdigest()
        _refuse(policy_path, approval.Request(app_sha, "?", "?", requester), str(error).splitlines()[0])
        raise
    try:
        spec = parse_study(study_text, source="study sent by the hub")
        request = approval.Request(app_sha, study_name(spec), approval.study_digest(spec), requester)
    except FedomopError as error:
        request = approval.Request(app_sha, "?", "?", requester)
        _refuse(policy_path, request, f"unreadable study: {error}")
        raise PolicyError(f"unreadable study: {error}", where="study sent by the hub") from None
    try:
        approval.check_approved(load_policy(policy_path), request)
    except PolicyError as error:
        _refuse(policy_path, request, str(error).splitlines()[0])
        raise
    return request


def run_task(address: str, token: str, policy_path: str) -> int:
    """One ClientApp task: pull, decide, answer with the installed app or a refusal; push the reply."""
    from flwr.app import Error, Message
    from flwr.common.constant import SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    from fedomop.harmonize.ground.errors import FedomopError

    _loopback(address)
    client = _client(address, token=token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context, status, details, reply = None, SubStatus.FAILED, "", None
    try:
        message, context, run, fab = pull_task_input(client)
        requester = str(run.override_config.get(approval.REQUESTER_KEY, "unauthenticated"))
        try:
            config = message.content["config"]
            admitted = admit(policy_path, fab.content, str(config["study"]), requester)
        except (FedomopError, KeyError) as error:
            details = f"{context.node_config.get('site', 'site')}: PolicyError: {error}"
            reply = Message(Error(code=ERROR_CODE_REFUSED, reason=details), reply_to=message)
        else:
            approval.ADMITTED = admitted
            from fedomop.federated.client_app import app as installed_app

            site = str(context.node_config.get("site", "site"))
            try:
                with wall_time_bound(wall_time_of(policy_path), site):
                    reply = installed_app(message=message, context=context)
                status = SubStatus.COMPLETED
            except WallTimeExceeded as error:
                _refuse(policy_path, admitted, str(error).splitlines()[0], outcome="stopped")
                details = f"{site}: WallTimeExceeded: {error}"
                reply = Message(Error(code=ERROR_CODE_WALL_TIME, reason=details), reply_to=message)
        if reply is not None:
            push_message(client, reply, context)
    finally:
        push_task_output(client=client, context=context, sub_status=status, details=details)
        heartbeat.stop()
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedomop.federated.executor")
    parser.add_argument("mode", choices=["serve", "task"])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--token")
    parser.add_argument("--auth-secret-file")
    args = parser.parse_args(argv)
    if args.mode == "task":
        return run_task(args.runtime_api_address, args.token, args.policy)
    os.environ.setdefault("FEDOMOP_EXECUTOR", "1")
    from fedomop.harmonize.ground.errors import FedomopError

    try:
        serve(args.runtime_api_address, args.policy, secret_file=args.auth_secret_file)
    except FedomopError as error:  # a setting of this machine (TMPDIR): one clear line, no traceback
        print(f"fedomop executor: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
