"""condition_occurrence: diagnoses and problem-list entries (standard concepts in the Condition domain)."""

from fedomop.harmonize.tables._target import TableTarget, event_columns

TARGET = TableTarget(
    table="condition_occurrence",
    domain="Condition",
    columns={
        **event_columns("condition"),
        "_start_date": "condition_start_date",
        "_start_datetime": "condition_start_datetime",
        "_end_date": "condition_end_date",
        "_end_datetime": "condition_end_datetime",
    },
    required_rule_keys=("person", "concept", "start", "type_concept"),
)
