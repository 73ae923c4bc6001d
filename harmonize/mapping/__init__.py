"""Site mappings as typed data: pydantic models of the YAML, the loader (``include:``) and pre-run checks."""

from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.mapping.models import Mapping, Rule, Source

__all__ = ["load_mapping", "Mapping", "Rule", "Source"]
