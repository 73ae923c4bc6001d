"""OMOP vocabularies in the site database: loading (Athena / OHDSI CSV) and code -> standard concept resolution."""

from fedomop.harmonize.vocabulary.loader import (
    VOCABULARY_TABLES,
    load_source_to_concept_map,
    load_vocabulary,
    load_vocabulary_extension,
)
from fedomop.harmonize.vocabulary.resolve import descendants, resolve_codes, standard_concept_by_code

__all__ = [
    "VOCABULARY_TABLES",
    "load_vocabulary",
    "load_vocabulary_extension",
    "load_source_to_concept_map",
    "resolve_codes",
    "standard_concept_by_code",
    "descendants",
]
