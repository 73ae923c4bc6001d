"""Read one mapped source whole, whatever its format: the single entry point the engine and chunking share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from fedomop.harmonize.mapping.models import Source
from fedomop.harmonize.sources.base import SourceBatch
from fedomop.harmonize.sources.tabular import match_files, read_tabular


def read_source(
    name: str, source: Source, source_dir: Path, on_frame: Callable[[pl.DataFrame], None] | None = None
) -> SourceBatch:
    """Every file of the source as one batch (accepted rows with lineage columns, read-time rejects).

    ``on_frame`` (FHIR sources): the accepted rows are handed over in blocks as they are read instead
    of being returned (see :func:`fedomop.harmonize.sources.fhir.reader.read_fhir`); tabular sources ignore it.
    """
    files = match_files(source_dir, source.files, name)
    if not source.is_fhir:
        return read_tabular(name, files, source_dir, source)
    from fedomop.harmonize.sources.fhir.reader import read_fhir

    fmt = "ndjson" if source.format == "fhir_ndjson" else "bundle"
    assert isinstance(source.columns, dict) and source.resource_type
    return read_fhir(
        name,
        files,
        source_dir,
        source.resource_type,
        source.columns,
        fmt=fmt,
        validation=source.validation,
        on_frame=on_frame,
    )
