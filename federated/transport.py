"""Accounting for what crosses the wire: bytes per round at the hub, content summaries at the sites.

:class:`CountingGrid` wraps the ServerApp's Grid so every round's traffic (both
directions) is measured without touching the strategies. :func:`describe_content`
summarises a reply (record kind, key, dtype, shape, bytes) so tests and audits can
check that a site sent only model parameters and aggregates, never the values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict


def record_number(value: object) -> float:
    """One number from a record: Flower types record values as scalars or lists, and the keys read here hold one
    number (a count, a metric, the server round); anything else is a protocol error, not a value to coerce."""
    if isinstance(value, int | float):
        return value
    raise TypeError(f"expected one number in the record, got {type(value).__name__}")


def content_bytes(content: RecordDict | None) -> int:
    if content is None:
        return 0
    total = 0
    for record in content.values():
        total += record.count_bytes()
    return total


def describe_content(content: RecordDict | None) -> list[dict[str, Any]]:
    """One entry per leaf: record name, kind, key, dtype, shape and size in bytes (no values)."""
    entries: list[dict[str, Any]] = []
    if content is None:
        return entries
    for record_name, record in content.items():
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                entries.append(
                    {
                        "record": record_name,
                        "kind": "array",
                        "key": key,
                        "dtype": array.dtype,
                        "shape": list(array.shape),
                        "bytes": len(array.data),
                    }
                )
        elif isinstance(record, MetricRecord | ConfigRecord):
            kind = "metric" if isinstance(record, MetricRecord) else "config"
            for key, value in record.items():
                length = len(value) if isinstance(value, list | str | bytes) else 1
                entries.append(
                    {"record": record_name, "kind": kind, "key": key, "dtype": type(value).__name__, "length": length}
                )
    return entries


@dataclass
class Traffic:
    """Bytes sent to and received from the sites, per phase label (e.g. a round)."""

    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)

    def add(self, label: str, sent: int, received: int, messages: int) -> None:
        self.sent[label] = self.sent.get(label, 0) + sent
        self.received[label] = self.received.get(label, 0) + received
        self.messages[label] = self.messages.get(label, 0) + messages


OnExchange = Callable[[str, float, int, int], None]
"""Told of every exchange: its label (``round 3`` or a phase), seconds, bytes sent and bytes received."""


class CountingGrid:
    """A Grid that counts message bytes per phase (and tells ``on_exchange``, e.g. the progress lines)."""

    def __init__(self, grid: Any, traffic: Traffic | None = None, on_exchange: OnExchange | None = None) -> None:
        self._grid = grid
        self.traffic = traffic or Traffic()
        self.phase = "setup"
        self.on_exchange = on_exchange
        self.audit_heads: dict[str, dict[str, Any]] = {}  # site -> the head of its audit log, latest reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        outgoing = list(messages)
        started = time.perf_counter()
        replies = list(self._grid.send_and_receive(outgoing, timeout=timeout))
        seconds = time.perf_counter() - started
        sent = sum(content_bytes(m.content) for m in outgoing)
        received = sum(content_bytes(r.content) for r in replies if r.has_content())
        label = self._label(outgoing)
        self.traffic.add(label, sent, received, len(outgoing) + len(replies))
        if self.on_exchange is not None:
            self.on_exchange(label, seconds, sent, received)
        for reply in replies:
            if reply.has_content() and "audit" in reply.content.config_records:
                record = reply.content.config_records["audit"]
                self.audit_heads[str(record["site"])] = {k: v for k, v in record.items() if k != "site"}
        return replies

    def _label(self, outgoing: list[Message]) -> str:
        """Strategies stamp ``server-round`` into the config they send; other phases use ``self.phase``."""
        for message in outgoing[:1]:
            for record in message.content.config_records.values():
                if "server-round" in record:
                    return "round " + str(record["server-round"])
        return self.phase
