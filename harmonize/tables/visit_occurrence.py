"""visit_occurrence: encounters; other tables point at them through the rule's ``visit`` column."""

from fedomop.harmonize.tables._target import TableTarget, default_end_to_start

TARGET = TableTarget(
    table="visit_occurrence",
    domain="Visit",
    columns={
        "_source_key": "visit_source_value",
        "_person_id": "person_id",
        "_provider_id": "provider_id",
        "_care_site_id": "care_site_id",
        "_concept_id": "visit_concept_id",
        "_source_concept_id": "visit_source_concept_id",
        "_start_date": "visit_start_date",
        "_start_datetime": "visit_start_datetime",
        "_end_date": "visit_end_date",
        "_end_datetime": "visit_end_datetime",
        "_type_concept_id": "visit_type_concept_id",
    },
    required_rule_keys=("id", "person", "start", "type_concept"),
    finish=default_end_to_start("visit_start_date", "visit_end_date"),
)
