"""observation: clinical facts that are neither conditions nor measurements (Observation domain)."""

from fedomop.harmonize.tables._target import TableTarget, event_columns

TARGET = TableTarget(
    table="observation",
    domain="Observation",
    columns={
        **event_columns("observation"),
        "_start_date": "observation_date",
        "_start_datetime": "observation_datetime",
        "_value": "value_as_number",
        "_unit_concept_id": "unit_concept_id",
        "_unit_source_value": "unit_source_value",
        "_value_source_value": "value_source_value",
    },
    required_rule_keys=("person", "concept", "start", "type_concept"),
)
