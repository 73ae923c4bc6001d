"""The ``fedomop`` console script: a tiny module so that an interrupt while the CLI is still importing ends cleanly.

Importing the CLI (typer, rich, polars, DuckDB) takes seconds on a loaded machine; a Ctrl-C or SIGTERM in that
window used to print a ``KeyboardInterrupt`` traceback (or end with 143 and no word). Here it ends with
"interrupted" and exit 130, like an interrupt during a command (:func:`fedomop.cli.main`).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

INTERRUPTED = 130

# polars' allocator (jemalloc, configured by this variable when polars loads) hands freed memory back to the
# kernel at once or within seconds by default. A mapping run frees and allocates chunk-sized frames every few
# seconds, so it kept faulting the same memory in again: at 1M persons 3.7M page faults and 15.7 s of kernel CPU
# (of 101 s). Kept for 30 s instead: 1.9M faults, 9.9 s kernel, 6% less CPU and wall, peak RSS 2.2 -> 3.0 GiB
# (docs/benchmarks.md). A value the user set is left alone.
ALLOCATOR_SETTING = ("_RJEM_MALLOC_CONF", "dirty_decay_ms:30000,muzzy_decay_ms:30000")


def _terminated(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Import the CLI under an interrupt guard, then hand over to it (it installs its own handlers)."""
    os.environ.setdefault(*ALLOCATOR_SETTING)  # before polars is imported: its allocator reads it once, at load
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        from fedomop.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(INTERRUPTED)
    signal.signal(signal.SIGTERM, previous)
    cli_main()
