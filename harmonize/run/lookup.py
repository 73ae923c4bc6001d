"""``lookup:``: fill a source's columns from the record another source holds under a referenced id.

The FHIR-to-OMOP case is medication resolution: a MedicationRequest/Statement/Administration names its drug
through ``medicationReference`` to a Medication resource (a Bundle entry by fullUrl, or ``Medication/<id>`` in the
same export); the drug's code is that Medication's ``code``. The join is on text ids, first match wins, and a
column that already has a value (``medicationCodeableConcept``, a contained Medication) keeps it.
"""

from __future__ import annotations

import polars as pl

from fedomop.harmonize.mapping.models import Lookup, Mapping


def lookup_sources(mapping: Mapping) -> set[str]:
    """Sources other sources read through ``lookup:`` (they are used, though no rule reads them)."""
    return {item.source for source in mapping.sources.values() for item in source.lookup}


def _fill(frame: pl.DataFrame, item: Lookup, other: pl.DataFrame) -> pl.DataFrame:
    looked = {mine: f"__lookup_{mine}" for mine in item.columns}
    table = (
        other.select(
            pl.col(item.on).cast(pl.String).alias("__lookup_key"),
            *(pl.col(theirs).alias(looked[mine]) for mine, theirs in item.columns.items()),
        )
        .drop_nulls("__lookup_key")
        .unique("__lookup_key", keep="first", maintain_order=True)
    )
    joined = frame.with_columns(pl.col(item.key).cast(pl.String).alias("__lookup_key")).join(
        table, on="__lookup_key", how="left", maintain_order="left"
    )
    filled = [
        pl.coalesce(pl.col(mine), pl.col(looked[mine]).cast(frame.schema[mine], strict=False)).alias(mine)
        for mine in item.columns
    ]
    return joined.with_columns(filled).drop("__lookup_key", *looked.values())


def apply_lookups(
    mapping: Mapping, batches: dict[str, pl.DataFrame], kept: dict[str, pl.DataFrame]
) -> dict[str, pl.DataFrame]:
    """Every source's ``lookup:`` applied over this chunk's batches; ``kept`` holds looked-up sources read by an
    earlier chunk (a Medication has no person, so it is read with the first chunk only)."""
    out = dict(batches)
    for name, frame in batches.items():
        for item in mapping.sources[name].lookup:
            other = batches.get(item.source, kept.get(item.source))
            if other is not None and frame.height:
                frame = _fill(frame, item, other)
        out[name] = frame
    return out
