"""Source readers: CSV/Parquet (tabular) and FHIR R4 (fhir) into SourceBatch."""
