"""Validation of an OMOP CDM database: pandera schemas from the spec, the OHDSI DQD checks, QA reports."""
