"""device_exposure: implants and devices used on the person (Device domain)."""

from fedomop.harmonize.tables._target import TableTarget, event_columns

TARGET = TableTarget(
    table="device_exposure",
    domain="Device",
    columns={
        **event_columns("device"),
        "_start_date": "device_exposure_start_date",
        "_start_datetime": "device_exposure_start_datetime",
        "_end_date": "device_exposure_end_date",
        "_end_datetime": "device_exposure_end_datetime",
        "_value": "quantity",
    },
    required_rule_keys=("person", "concept", "start", "type_concept"),
)
