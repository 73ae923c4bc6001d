"""care_site: hospitals, departments and clinics (FHIR Organization / Location)."""

from fedomop.harmonize.tables._target import TableTarget

TARGET = TableTarget(
    table="care_site",
    columns={"_source_key": "care_site_source_value", "_location_id": "location_id"},
    required_rule_keys=("id",),
)
