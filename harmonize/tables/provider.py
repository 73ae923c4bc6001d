"""provider: clinicians (FHIR Practitioner), referenced by the rules' ``provider`` column."""

from fedomop.harmonize.tables._target import TableTarget

TARGET = TableTarget(
    table="provider",
    columns={"_source_key": "provider_source_value", "_care_site_id": "care_site_id"},
    required_rule_keys=("id",),
)
