"""fedomop harmonize: local EHR extracts -> OMOP CDM v5.4, validated and reported at each site."""
