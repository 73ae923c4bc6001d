"""measurement: lab results and vital signs (Measurement domain), values in the standard UCUM unit."""

from fedomop.harmonize.tables._target import TableTarget, event_columns

TARGET = TableTarget(
    table="measurement",
    domain="Measurement",
    columns={
        **event_columns("measurement"),
        "_start_date": "measurement_date",
        "_start_datetime": "measurement_datetime",
        "_value": "value_as_number",
        "_unit_concept_id": "unit_concept_id",
        "_unit_source_value": "unit_source_value",
        "_value_source_value": "value_source_value",
    },
    required_rule_keys=("person", "concept", "start", "type_concept"),
)
