"""The ``fedomop`` console script: a tiny module so that an interrupt while the CLI is still importing ends cleanly.

Importing the CLI (typer, rich, polars, DuckDB) takes seconds on a loaded machine; a Ctrl-C or SIGTERM in that
window used to print a ``KeyboardInterrupt`` traceback (or end with 143 and no word). Here it ends with
"interrupted" and exit 130, like an interrupt during a command (:func:`fedomop.cli.main`).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

INTERRUPTED = 130


def _terminated(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Import the CLI under an interrupt guard, then hand over to it (it installs its own handlers)."""
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        from fedomop.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(INTERRUPTED)
    signal.signal(signal.SIGTERM, previous)
    cli_main()
