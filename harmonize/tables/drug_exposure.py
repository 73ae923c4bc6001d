"""drug_exposure: prescriptions, administrations, dispensings (Drug domain); end date defaults to the start."""

from fedomop.harmonize.tables._target import TableTarget, default_end_to_start, event_columns

TARGET = TableTarget(
    table="drug_exposure",
    domain="Drug",
    columns={
        **event_columns("drug"),
        "_start_date": "drug_exposure_start_date",
        "_start_datetime": "drug_exposure_start_datetime",
        "_end_date": "drug_exposure_end_date",
        "_end_datetime": "drug_exposure_end_datetime",
        "_value": "quantity",
    },
    required_rule_keys=("person", "concept", "start", "type_concept"),
    finish=default_end_to_start("drug_exposure_start_date", "drug_exposure_end_date"),
)
