"""FaultTolerantGrid logic against a scripted SuperLink side (the process test covers real Flower)."""

from __future__ import annotations

import time

import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedomop.federated.faults import SITE_RECORD, FaultTolerantGrid, TooFewSitesError


@pytest.fixture(autouse=True)
def task_identity():
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 5, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class ScriptedLink(Grid):
    """Answers per node: 'ok' (reply at once), 'hang' (never), 'refuse' (error reply), 'link-error' (SuperLink error).

    'stall' is a half-uploaded reply: pulling it blocks ``stall_s`` and then yields Flower's
    MESSAGE_UNAVAILABLE error. ``ready_after`` delays a node's reply by that many seconds.
    """

    def __init__(
        self,
        behaviour: dict[int, str],
        online: list[int] | None = None,
        ready_after: dict[int, float] | None = None,
        stall_s: float = 0.0,
    ) -> None:
        self.behaviour = behaviour
        self.online = list(behaviour) if online is None else online
        self.outbox: dict[str, Message] = {}
        self.ready_after = ready_after or {}
        self.stall_s = stall_s
        self.pushed_at = 0.0

    def set_run(self, run):
        pass

    @property
    def run(self):
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):
        return list(self.online)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message_id = f"m{len(self.outbox)}"
            message.metadata.__dict__["_message_id"] = message_id
            self.outbox[message_id] = message
            ids.append(message_id)
        self.pushed_at = time.monotonic()
        return ids

    def pull_messages(self, message_ids):
        replies = []
        for message_id in list(message_ids):
            message = self.outbox[message_id]
            node = message.metadata.dst_node_id
            mode = self.behaviour[node]
            if time.monotonic() - self.pushed_at < self.ready_after.get(node, 0.0):
                continue
            if mode == "stall":
                time.sleep(self.stall_s)
                replies.append(Message(Error(code=3, reason=f"site_{node} reply objects unavailable"), reply_to=message))
                continue
            if mode == "ok":
                content = RecordDict(
                    {
                        "metrics": MetricRecord({"num-examples": 100}),
                        SITE_RECORD: ConfigRecord({"site": f"site_{node}"}),
                    }
                )
                reply = Message(content, reply_to=message)
            elif mode in ("refuse", "link-error"):
                reply = Message(Error(code=4031, reason=f"site_{node} refused"), reply_to=message)
            else:
                continue
            if mode == "link-error":
                reply.metadata.__dict__["_src_node_id"] = 0  # errors made by the SuperLink come from no node
            replies.append(reply)
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("FaultTolerantGrid must bound the round itself")


def _round(grid: Grid, nodes: list[int]):
    return grid.send_and_receive([grid.create_message(RecordDict(), "train", n, "1") for n in nodes])


def test_hanging_site_is_reported_missing_after_the_round_timeout():
    grid = FaultTolerantGrid(
        ScriptedLink({1: "ok", 2: "ok", 3: "hang"}), round_timeout=0.6, min_sites=2, poll_interval=0.05
    )
    started = time.monotonic()
    replies = list(_round(grid, [1, 2, 3]))
    assert 0.55 <= time.monotonic() - started < 3
    assert len(replies) == 2
    [record] = grid.report.rounds
    assert record.answered == ["site_1", "site_2"] and record.missing == ["node 3"]
    assert grid.report.finished and grid.report.missing_sites == ["node 3"]


def test_a_pull_stalled_past_the_deadline_still_collects_the_replies_sent_meanwhile():
    """A site killed mid-upload makes Flower's pull block; the others' replies arrive during it."""
    link = ScriptedLink({1: "ok", 2: "ok", 3: "stall"}, ready_after={1: 0.2, 2: 0.2}, stall_s=0.8)
    grid = FaultTolerantGrid(link, round_timeout=0.4, min_sites=2, poll_interval=0.05)
    replies = list(_round(grid, [1, 2, 3]))
    assert len(replies) == 3
    [record] = grid.report.rounds
    assert sorted(record.answered) == ["site_1", "site_2"] and record.missing == []
    assert record.failed == {"node 3": "site_3 reply objects unavailable"}
    assert grid.report.finished


def test_refusals_and_superlink_errors_are_attributed_to_the_site():
    grid = FaultTolerantGrid(ScriptedLink({1: "ok", 2: "refuse", 3: "link-error"}), round_timeout=5, min_sites=1)
    started = time.monotonic()
    _round(grid, [1, 2, 3])
    assert time.monotonic() - started < 1  # nobody to wait for
    [record] = grid.report.rounds
    assert record.failed == {"node 2": "site_2 refused", "node 3": "site_3 refused"} and record.missing == []
    assert "node 2 failed: site_2 refused" in grid.report.summary()


def test_fewer_than_min_sites_aborts_with_the_report():
    grid = FaultTolerantGrid(
        ScriptedLink({1: "ok", 2: "hang", 3: "refuse"}), round_timeout=0.3, min_sites=2, poll_interval=0.05
    )
    with pytest.raises(TooFewSitesError, match=r"train round 1: only 1 of 3 sites answered, 2 required") as info:
        _round(grid, [1, 2, 3])
    assert info.value.report.aborted and not info.value.report.finished
    assert "ABORTED" in info.value.report.summary()


def test_waiting_for_sites_is_bounded():
    grid = FaultTolerantGrid(ScriptedLink({1: "ok"}, online=[1]), round_timeout=1, min_sites=2, wait_for_sites=0.2)
    assert grid.get_node_ids() == [1]  # first call: still waiting
    time.sleep(0.3)
    with pytest.raises(TooFewSitesError, match="only 1 site\\(s\\) connected, 2 required"):
        grid.get_node_ids()


def test_names_learned_from_replies_label_later_rounds():
    link = ScriptedLink({1: "ok", 2: "ok"})
    grid = FaultTolerantGrid(link, round_timeout=0.3, min_sites=1, poll_interval=0.05)
    _round(grid, [1, 2])
    link.behaviour[2] = "hang"
    _round(grid, [1, 2])
    assert grid.report.rounds[1].missing == ["site_2"] and grid.report.rounds[1].number == 2
    assert grid.report.to_dict()["missing_sites"] == ["site_2"]
