"""Read one mapped source whole, whatever its format: the bridge from the mapping's sources to the readers.

The readers take plain options (:mod:`fedomop.harmonize.sources.options`); this module builds them from the
mapping's :class:`~fedomop.harmonize.mapping.models.Source`, so only the run stage knows both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import polars as pl

from fedomop.harmonize.mapping.models import Source
from fedomop.harmonize.sources.base import SourceBatch, empty_rejects
from fedomop.harmonize.sources.options import FhirOptions, TabularOptions
from fedomop.harmonize.sources.tabular import read_tabular


def tabular_options(source: Source) -> TabularOptions:
    """Reader options of a CSV/Parquet source."""
    fmt: Literal["csv", "parquet"] = "parquet" if source.format == "parquet" else "csv"
    return TabularOptions(
        format=fmt, encoding=source.encoding, delimiter=source.delimiter, null_values=tuple(source.null_values)
    )


def fhir_options(source: Source) -> FhirOptions:
    """Reader options of a FHIR source (the mapping's model guarantees resource_type and a column dict)."""
    columns = source.columns if isinstance(source.columns, dict) else {}
    return FhirOptions(
        format="ndjson" if source.format == "fhir_ndjson" else "bundle",
        resource_type=source.resource_type or "",
        columns=columns,
        validation=source.validation,
    )


def read_source(
    name: str,
    source: Source,
    files: list[Path],
    source_dir: Path,
    on_frame: Callable[[pl.DataFrame], None] | None = None,
    understood: Iterable[str] = (),
) -> SourceBatch:
    """Every file of the source as one batch (accepted rows with lineage columns, read-time rejects).

    ``files`` come from :func:`fedomop.harmonize.run.files.resolve_files` (matched once per run); an absent
    source (no file) is an empty batch. ``on_frame`` (FHIR sources): the accepted rows are handed over in blocks
    as they are read instead of being returned (see :func:`fedomop.harmonize.sources.fhir.reader.read_fhir`);
    tabular sources ignore it. ``understood``: the mapping's ``fhir_understood_modifier_extensions`` (FHIR only).
    """
    if not files:
        return SourceBatch(name=name, frame=pl.DataFrame(), rejects=empty_rejects(), seen=0)
    if not source.is_fhir:
        return read_tabular(name, files, source_dir, tabular_options(source))
    from fedomop.harmonize.sources.fhir.reader import Each, read_fhir

    options = fhir_options(source)
    return read_fhir(
        name,
        files,
        source_dir,
        options.resource_type,
        options.columns,
        fmt=options.format,
        validation=options.validation,
        on_frame=on_frame,
        each=Each(source.each.element, tuple(source.each.replaces)) if source.each else None,
        understood=understood,
    )
