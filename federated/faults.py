"""Fault tolerance for federated runs: round timeouts, ``min_sites``, and a report of who was missing.

Wrap the ServerApp's Grid and hand the wrapper to any Flower strategy::

    grid = FaultTolerantGrid(grid, round_timeout=120, min_sites=3)
    try:
        result = strategy.start(grid=grid, initial_arrays=..., num_rounds=5, timeout=120)
    finally:
        report = grid.report          # rounds, who answered, who was missing/refused, bytes, seconds

Behaviour:

* every ``send_and_receive`` waits at most ``round_timeout`` seconds; a site that died or
  hangs simply does not answer and the round goes on with the replies that arrived;
* a round in which fewer than ``min(min_sites, sites asked)`` sites answered raises
  :class:`TooFewSitesError` (a StudyError) naming the missing sites, instead of
  aggregating over too few sites; so does waiting longer than ``wait_for_sites``
  seconds for ``min_sites`` connected nodes (Flower's node sampling would wait forever);
* with ``turn_taking=True`` (cyclic XGBoost: one site per round) a round that asked fewer
  than ``min_sites`` sites may go unanswered -- that turn is skipped and the strategy keeps
  its model -- as long as ``min_sites`` sites answered the last time they were asked;
* a site that restarts reconnects to the SuperLink and is sampled again from the
  next round on; with SuperNode authentication it keeps its node id, and the SuperLink
  only re-admits it once the dead process missed two heartbeats (about a minute), which
  :func:`start_supernode_rejoining` waits out;
* sites are named from the ``fedomop.site`` record that the governance mod adds to
  every reply (node ids until a site has answered once).

Set the strategy's ``min_available_nodes``/``min_train_nodes`` to at most ``min_sites``,
so sampling does not insist on sites that are gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedomop.federated.errors import StudyError

SITE_RECORD = "fedomop.site"  # written by fedomop.federated.governance.mods on every reply


class TooFewSitesError(StudyError):
    """Fewer than ``min_sites`` sites answered a round (or were connected)."""

    def __init__(self, message: str, report: FaultReport, **kwargs: Any) -> None:
        self.report = report
        super().__init__(message, **kwargs)


PEER_LOST = "allreduce lost a peer"  # a histogram site's error when another rank stopped answering


@dataclass
class RoundRecord:
    """One send/receive exchange (a training or evaluation round, or any other query)."""

    number: int  # 1, 2, ... per message type (the strategy's round when it sends one exchange per round)
    group: str
    message_type: str
    asked: list[str]
    answered: list[str]
    failed: dict[str, str]
    missing: list[str]
    seconds: float
    bytes_received: int

    def culprits(self) -> list[str]:
        """Sites that caused this exchange to miss them: silent ones, and failures of their own.

        In histogram XGBoost the survivors of a killed site fail too (their allreduce lost a
        peer, :data:`PEER_LOST`); they are not named as missing while a silent site explains it.
        """
        own = [site for site, why in self.failed.items() if not (self.missing and PEER_LOST in why)]
        return [*self.missing, *own]


@dataclass
class FaultReport:
    """Everything the result needs to say about site availability."""

    min_sites: int
    round_timeout: float
    rounds: list[RoundRecord] = field(default_factory=list)
    aborted: str | None = None

    @property
    def missing_sites(self) -> list[str]:
        """Sites that did not answer (timed out or failed) in at least one exchange."""
        return sorted({site for r in self.rounds for site in r.culprits()})

    @property
    def finished(self) -> bool:
        return self.aborted is None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "missing_sites": self.missing_sites, "finished": self.finished}

    def summary(self) -> str:
        lines = [
            f"{len(self.rounds)} exchanges, round timeout {self.round_timeout:g}s, min_sites {self.min_sites}: "
            + ("finished" if self.finished else f"ABORTED: {self.aborted}")
        ]
        for r in self.rounds:
            problems = [f"{site} timed out" for site in r.missing] + [
                f"{site} failed: {why}" for site, why in r.failed.items()
            ]
            status = "; ".join(problems) if problems else "all answered"
            lines.append(
                f"  {r.message_type} {r.number}: {len(r.answered)}/{len(r.asked)} answered in {r.seconds:.1f}s ({status})"
            )
        if self.missing_sites:
            lines.append(f"missing sites: {', '.join(self.missing_sites)}")
        return "\n".join(lines)


def _reply_size(message: Message) -> int:
    if message.has_error():
        return 0
    from fedomop.federated.governance.suppression import outgoing_sizes

    return sum(outgoing_sizes(message.content).values())


class FaultTolerantGrid(Grid):
    """A Grid that bounds every round, enforces ``min_sites`` and records who was missing."""

    def __init__(
        self,
        grid: Grid,
        *,
        round_timeout: float,
        min_sites: int,
        wait_for_sites: float | None = None,
        poll_interval: float = 0.5,
        observers: Iterable[Callable[[Message], None]] = (),
        turn_taking: bool = False,
    ) -> None:
        if min_sites < 1 or round_timeout <= 0:
            raise StudyError(
                "min_sites must be >= 1 and round_timeout > 0",
                where="FaultTolerantGrid",
                fix="pass e.g. round_timeout=120, min_sites=2",
            )
        self.inner = grid
        self.round_timeout = round_timeout
        self.min_sites = min_sites
        self.wait_for_sites = round_timeout if wait_for_sites is None else wait_for_sites
        self.poll_interval = poll_interval
        self.observers = list(observers)  # see every reply (e.g. to check or count what sites sent)
        self.report = FaultReport(min_sites=min_sites, round_timeout=round_timeout)
        self.site_names: dict[int, str] = {}
        self.turn_taking = turn_taking  # rounds ask one site at a time (cyclic): a miss skips that turn
        self._last_answered: dict[str, bool] = {}  # per site: did it answer the last time it was asked
        self._short_since: float | None = None

    # -- delegation ------------------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    # -- fault handling --------------------------------------------------------------------
    def site(self, node_id: int) -> str:
        return self.site_names.get(node_id, f"node {node_id}")

    def get_node_ids(self) -> Iterable[int]:
        """Connected nodes; raises TooFewSitesError after ``wait_for_sites`` s below ``min_sites``."""
        node_ids = list(self.inner.get_node_ids())
        if len(node_ids) >= self.min_sites:
            self._short_since = None
            return node_ids
        now = time.monotonic()
        self._short_since = self._short_since or now
        if now - self._short_since > self.wait_for_sites:
            self._abort(
                f"only {len(node_ids)} site(s) connected, {self.min_sites} required (waited {self.wait_for_sites:g}s)"
            )
        return node_ids

    def name_sites(self, names: dict[int, str]) -> None:
        """Name nodes (e.g. from the hub's describe round) and relabel the exchanges already recorded."""
        old = {f"node {node}": name for node, name in names.items()}
        self.site_names.update(names)
        for record in self.report.rounds:
            record.asked = [old.get(s, s) for s in record.asked]
            record.answered = [old.get(s, s) for s in record.answered]
            record.missing = [old.get(s, s) for s in record.missing]
            record.failed = {old.get(s, s): why for s, why in record.failed.items()}

    def _abort(self, reason: str) -> None:
        self.report.aborted = reason
        raise TooFewSitesError(
            reason,
            self.report,
            where="federated run",
            fix="restart the missing SuperNodes (they rejoin the next round) or lower min_sites",
        )

    def _learn_names(self, replies: list[Message]) -> None:
        for reply in replies:
            if not reply.has_error() and SITE_RECORD in reply.content:
                self.site_names[reply.metadata.src_node_id] = str(reply.content[SITE_RECORD]["site"])

    def _exchange(self, messages: list[Message], limit: float) -> dict[int, Message]:
        """Push, then pull every ``poll_interval`` s until all replied or ``limit`` s passed; replies by node.

        One pull always starts after the deadline: a pull can block far past it (Flower retries
        the objects of a half-uploaded reply, e.g. from a site killed mid-upload), and the replies
        the other sites sent meanwhile must not be counted as missing.
        """
        message_ids = [str(i) for i in self.inner.push_messages(messages)]
        node_of = {mid: m.metadata.dst_node_id for mid, m in zip(message_ids, messages, strict=True) if mid}
        pending, replies = set(node_of), {}
        deadline = time.monotonic() + limit
        while pending:
            last_look = time.monotonic() >= deadline
            for reply in self.inner.pull_messages(pending):
                source = reply.metadata.reply_to_message_id
                if source in pending:  # attribute by the message answered: SuperLink errors come from no node
                    pending.discard(source)
                    replies[node_of[source]] = reply
            if not pending or last_look:
                break
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        limit = self.round_timeout if timeout is None else min(timeout, self.round_timeout)
        started = time.monotonic()
        by_node = self._exchange(messages, limit)
        seconds = time.monotonic() - started
        replies = list(by_node.values())
        for observe in self.observers:
            for reply in replies:
                observe(reply)
        self._learn_names(replies)
        asked = [m.metadata.dst_node_id for m in messages]
        answered = [n for n in asked if n in by_node and not by_node[n].has_error()]
        failed = {
            self.site(n): by_node[n].error.reason or f"error {by_node[n].error.code}"
            for n in asked
            if n in by_node and by_node[n].has_error()
        }
        missing = [self.site(n) for n in asked if n not in by_node]
        message_type = messages[0].metadata.message_type
        number = 1 + sum(r.message_type == message_type for r in self.report.rounds)
        self.report.rounds.append(
            RoundRecord(
                number=number,
                group=messages[0].metadata.group_id,
                message_type=message_type,
                asked=[self.site(n) for n in asked],
                answered=[self.site(n) for n in answered],
                failed=failed,
                missing=missing,
                seconds=round(seconds, 3),
                bytes_received=sum(_reply_size(r) for r in replies),
            )
        )
        self._last_answered.update({self.site(n): n in answered for n in asked})
        required = min(self.min_sites, len(asked))
        if self.turn_taking and len(asked) < self.min_sites:
            required = 0  # the strategy keeps its model for a skipped turn; enough sites must remain
            lost = sorted(site for site, ok in self._last_answered.items() if not ok)
            known = set(self.site_names.values()) | set(self._last_answered)
            if len(known) - len(lost) < self.min_sites:
                self._abort(
                    f"{message_type} round {number}: only {len(known) - len(lost)} site(s) still answering, "
                    f"{self.min_sites} required (missing: {', '.join(lost)})"
                )
        if len(answered) < required:
            own = {site: why for site, why in failed.items() if site in self.report.rounds[-1].culprits()}
            stopped = len(failed) - len(own)
            self._abort(
                f"{message_type} round {number}: only {len(answered)} of {len(asked)} sites answered, "
                f"{required} required (missing: {', '.join(missing) or 'none'}; "
                f"failed: {'; '.join(f'{site}: {why}' for site, why in own.items()) or 'none'}"
                + (f"; {stopped} other site(s) stopped with it: {PEER_LOST})" if stopped else ")")
            )
        return replies


ADMITTED = b"SuperNode ID:"
REFUSED = (b"Exit Code:", b"Failed to activate SuperNode")


def _outcome(log: Path, offset: int, process: subprocess.Popen, settle: float) -> bool:
    """Whether this start attempt was admitted (its log says so) or refused (the log says so, or it died)."""
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        text = log.read_bytes()[offset:]
        if ADMITTED in text:
            return True
        if any(marker in text for marker in REFUSED) or process.poll() is not None:
            return False
        time.sleep(0.25)
    return process.poll() is None  # no verdict yet but alive: let it be


def _end_group(process: subprocess.Popen) -> None:
    """End a refused attempt and the helper processes it spawned (its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(10)


def start_supernode_rejoining(
    argv: list[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    retry_for: float = 150.0,
    settle: float = 30.0,
    pause: float = 2.0,
) -> subprocess.Popen:
    """Start a SuperNode that is rejoining after a crash; retry until the SuperLink lets it in.

    With SuperNode authentication a restarted site keeps its node id, but the SuperLink
    refuses to activate that id (``Failed to activate SuperNode``, exit code 305) until
    the dead process missed two heartbeats (Flower's interval is 30 s). So: start, read
    the log until it is admitted (``SuperNode ID:``) or refused, and on refusal end that
    attempt and try again after ``pause`` seconds, for up to ``retry_for`` seconds.
    """
    deadline = time.monotonic() + retry_for
    attempt = 0
    while True:
        attempt += 1
        with open(log, "ab") as handle:
            handle.write(f"--- fedomop: start attempt {attempt}\n".encode())
            offset = handle.tell()
            process = subprocess.Popen(
                argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )
        if _outcome(log, offset, process, settle):
            return process
        _end_group(process)
        if time.monotonic() + pause > deadline:
            raise StudyError(
                f"the SuperNode could not rejoin ({attempt} attempts refused)",
                where=str(log),
                fix="check the SuperLink address, the site key and that the site is registered",
            )
        time.sleep(pause)
