"""Progress callbacks: what the run reports as it goes (the CLI draws bars from them, a notebook may ignore them)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def no_progress(label: str, done: int, total: int) -> None:
    return None


def chunk_progress(progress: Progress, chunk: int, chunks: int) -> Progress:
    """Steps of a chunked run report as "chunk k/n": one bar that advances per chunk, not per table."""

    def report(label: str, done: int, total: int) -> None:
        if label == "load" and done == total:
            progress("chunks", chunk + 1, chunks)

    if chunk == 0:
        progress("chunks", 0, chunks)
    return report
