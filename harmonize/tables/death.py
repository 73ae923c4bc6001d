"""death: at most one row per person (its primary key is person_id); ``start`` is the death date."""

from fedomop.harmonize.tables._target import TableTarget

TARGET = TableTarget(
    table="death",
    columns={
        "_person_id": "person_id",
        "_start_date": "death_date",
        "_start_datetime": "death_datetime",
        "_type_concept_id": "death_type_concept_id",
        "_concept_id": "cause_concept_id",
        "_source_value": "cause_source_value",
        "_source_concept_id": "cause_source_concept_id",
    },
    required_rule_keys=("person", "start", "type_concept"),
    one_per_person=True,
)
