"""note: clinical notes (FHIR DocumentReference); ``concept`` is the note class, ``start`` the note date."""

from fedomop.harmonize.tables._target import TableTarget

TARGET = TableTarget(
    table="note",
    columns={
        "_person_id": "person_id",
        "_visit_id": "visit_occurrence_id",
        "_provider_id": "provider_id",
        "_start_date": "note_date",
        "_start_datetime": "note_datetime",
        "_type_concept_id": "note_type_concept_id",
        "_concept_id": "note_class_concept_id",
        "_source_value": "note_source_value",
    },
    required_rule_keys=("person", "start", "type_concept"),
)
