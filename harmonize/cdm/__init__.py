"""The OMOP CDM v5.4 specification and the database schema generated from it."""

from fedomop.harmonize.cdm.schema import build_metadata, create_cdm
from fedomop.harmonize.cdm.spec import CdmSpec, FieldSpec, TableSpec, load_spec

__all__ = ["CdmSpec", "FieldSpec", "TableSpec", "load_spec", "build_metadata", "create_cdm"]
