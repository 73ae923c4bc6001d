"""FHIR R4 sources: the NDJSON/Bundle reader, the mapping-path compiler and the structural validator."""
