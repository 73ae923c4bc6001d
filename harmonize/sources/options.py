"""How to read a source, as plain values the run stage builds from the mapping.

Readers take these instead of the mapping's models, so the sources stage knows nothing of the mapping language
(``sources`` and ``mapping`` sit side by side; only ``run`` knows both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

PYTHON_CODEC = {
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "latin-1": "latin-1",
    "latin1": "latin-1",
    "iso-8859-1": "latin-1",
    "cp1252": "cp1252",
    "windows-1252": "cp1252",
}


@dataclass(frozen=True)
class TabularOptions:
    """A CSV or Parquet source: its text encoding, delimiter and the cell values that mean "no value"."""

    format: Literal["csv", "parquet"] = "csv"
    encoding: str = "utf-8"
    delimiter: str = ","
    null_values: tuple[str, ...] = ("",)

    @property
    def codec(self) -> str:
        """The Python codec of the declared encoding."""
        return PYTHON_CODEC[self.encoding.lower()]

    @property
    def is_utf8(self) -> bool:
        return self.codec == "utf-8"


@dataclass(frozen=True)
class FhirOptions:
    """A FHIR source: one resource type from NDJSON files or Bundles, the columns to extract, how strictly to check."""

    format: Literal["ndjson", "bundle"]
    resource_type: str
    columns: Mapping[str, str] = field(default_factory=dict)
    validation: Literal["structural", "full"] = "structural"
