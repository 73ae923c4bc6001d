"""cdm_source: the one row describing this site's CDM instance (from the mapping's ``cdm_source:``)."""

from __future__ import annotations

import datetime as dt

import polars as pl

from fedomop.harmonize.mapping.models import CdmSourceInfo
from fedomop.harmonize.tables._target import TableTarget

TARGET = TableTarget(table="cdm_source", columns={}, derived=True)
CDM_VERSION_CONCEPT_ID = 756265  # "OMOP CDM Version 5.4.0"


def _date(text: str | None, fallback: dt.date) -> dt.date:
    return dt.date.fromisoformat(text) if text else fallback


def build(info: CdmSourceInfo, vocabulary_version: str, mapping_file: str, extract_date: dt.date) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "cdm_source_name": info.cdm_source_name,
                "cdm_source_abbreviation": info.cdm_source_abbreviation,
                "cdm_holder": info.cdm_holder,
                "source_description": info.source_description,
                "source_release_date": _date(info.source_release_date, extract_date),
                "cdm_release_date": _date(info.cdm_release_date, extract_date),
                "cdm_version": "5.4",
                "cdm_version_concept_id": CDM_VERSION_CONCEPT_ID,
                "vocabulary_version": info.vocabulary_version or vocabulary_version,
                "_source": "mapping",
                "_source_file": mapping_file,
                "_source_row": "cdm_source",
            }
        ]
    )
