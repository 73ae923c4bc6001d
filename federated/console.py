"""What ``fedomop train`` shows while it trains: one progress line per round, and no third-party noise.

:class:`RoundProgress` receives every exchange the hub makes (from
:class:`fedomop.federated.transport.CountingGrid`) and prints one line per round or phase with its
seconds and bytes, through rich on stderr (so stdout stays the result table). rich writes ANSI codes
only to a terminal; :func:`quiet_third_party` does the same for Flower's logger and keeps Flower's
deprecation notices, Ray's per-actor log forwarding and Python DeprecationWarnings of the training
stack out of the output a user or a log file sees.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console


def human_bytes(n: int) -> str:
    """Bytes in decimal units (kB = 1000 B), as network traffic is usually counted."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


@dataclass
class _Open:
    label: str
    started: float
    ended: float
    sent: int = 0
    received: int = 0


@dataclass
class RoundProgress:
    """Per-round (or per-phase) lines: ``round 3/30  0.41 s  sent 12.3 kB  received 45.6 kB``.

    Called once per exchange; a line is printed when the label changes (a new round or phase) and by
    :meth:`close`. ``rounds`` is the number of federated rounds, for the ``i/n``.
    """

    rounds: int
    console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    clock: Callable[[], float] = time.perf_counter
    lines: list[str] = field(default_factory=list)
    _open: _Open | None = None

    def __call__(self, label: str, seconds: float, sent: int, received: int) -> None:
        now = self.clock()
        if self._open is None or self._open.label != label:
            self.close()
            self._open = _Open(label, now - seconds, now)
        self._open.ended = now
        self._open.sent += sent
        self._open.received += received

    def close(self) -> None:
        """Print the round or phase still open."""
        current, self._open = self._open, None
        if current is None:
            return
        seconds = current.ended - current.started  # from the first message sent to the last reply received
        name = current.label
        if name.startswith("round "):
            name = f"round {name.removeprefix('round ')}/{self.rounds}"
        line = f"{name}  {seconds:.2f} s  sent {human_bytes(current.sent)}  received {human_bytes(current.received)}"
        self.lines.append(line)
        self.console.print(line, markup=False)


class _DropDeprecations(logging.Filter):
    """Flower's own deprecation notices (e.g. for ``run_simulation``) are about Flower's API, not the user's study."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in str(record.msg)


def quiet_third_party(stream: object = None) -> None:
    """No colour codes from Flower's logger unless ``stream`` (default stderr) is a terminal; no Flower
    deprecation notices; no DeprecationWarnings from the training stack in Ray's worker processes."""
    from flwr.supercore.logger import FLOWER_LOGGER, console_handler

    tty = bool(getattr(stream or sys.stderr, "isatty", lambda: False)())
    console_handler.colored = tty
    if not any(isinstance(f, _DropDeprecations) for f in FLOWER_LOGGER.filters):
        FLOWER_LOGGER.addFilter(_DropDeprecations())
    # Ray's workers inherit the environment: their Python warnings filter starts from it.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
