"""procedure_occurrence: surgery, radiotherapy, imaging and other acts (Procedure domain)."""

from fedomop.harmonize.tables._target import TableTarget, event_columns

TARGET = TableTarget(
    table="procedure_occurrence",
    domain="Procedure",
    columns={
        **event_columns("procedure"),
        "_start_date": "procedure_date",
        "_start_datetime": "procedure_datetime",
        "_end_date": "procedure_end_date",
        "_end_datetime": "procedure_end_datetime",
    },
    required_rule_keys=("person", "concept", "start", "type_concept"),
)
