"""Read one mapped source whole, whatever its format: the single entry point the engine and chunking share."""

from __future__ import annotations

from pathlib import Path

from harmonize.mapping.models import Source
from harmonize.sources.base import SourceBatch
from harmonize.sources.tabular import match_files, read_tabular


def read_source(name: str, source: Source, source_dir: Path) -> SourceBatch:
    """Every file of the source as one batch (accepted rows with lineage columns, read-time rejects)."""
    files = match_files(source_dir, source.files, name)
    if not source.is_fhir:
        return read_tabular(name, files, source_dir, source)
    from harmonize.sources.fhir import read_fhir

    fmt = "ndjson" if source.format == "fhir_ndjson" else "bundle"
    assert isinstance(source.columns, dict) and source.resource_type
    return read_fhir(
        name, files, source_dir, source.resource_type, source.columns, fmt=fmt, validation=source.validation
    )
