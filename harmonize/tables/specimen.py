"""specimen: samples taken from the person (FHIR Specimen). No domain is routed here, and a specimen's rows stay
here whatever its concept's domain: a specimen is a thing, not an event another table could hold."""

from fedomop.harmonize.tables._target import TableTarget

TARGET = TableTarget(
    table="specimen",
    columns={
        "_person_id": "person_id",
        "_concept_id": "specimen_concept_id",
        "_source_value": "specimen_source_value",
        "_type_concept_id": "specimen_type_concept_id",
        "_start_date": "specimen_date",
        "_start_datetime": "specimen_datetime",
        "_source_key": "specimen_source_id",
    },
    required_rule_keys=("person", "concept", "start", "type_concept"),
)
