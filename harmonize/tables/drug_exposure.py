"""drug_exposure: prescriptions, administrations, dispensings (Drug domain).

A missing end date follows the OHDSI convention (THEMIS "drug_exposure_end_date when not given explicitly"):
start + days_supply - 1 when days_supply is known (1 or more), else the start date.
"""

import polars as pl

from fedomop.harmonize.tables._target import TableTarget, event_columns

START, END, DAYS = "drug_exposure_start_date", "drug_exposure_end_date", "days_supply"


def end_from_days_supply(frame: pl.DataFrame) -> pl.DataFrame:
    """Fill a missing drug_exposure_end_date: start + days_supply - 1 (a 30-day supply started on 1 March ends
    on 30 March), else the start (an administration, or a prescription without a supply: one day). A
    days_supply below 1 does not count (the end may not precede the start). Whole days, as the column's
    integer type keeps them."""
    if DAYS in frame.columns:
        days = pl.col(DAYS).cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)
        inferred = pl.when(days >= 1).then(pl.col(START) + pl.duration(days=days - 1)).otherwise(pl.col(START))
    else:
        inferred = pl.col(START)
    return frame.with_columns(pl.coalesce(pl.col(END), inferred).alias(END))


TARGET = TableTarget(
    table="drug_exposure",
    domain="Drug",
    columns={
        **event_columns("drug"),
        "_start_date": START,
        "_start_datetime": "drug_exposure_start_datetime",
        "_end_date": END,
        "_end_datetime": "drug_exposure_end_datetime",
        "_value": "quantity",
    },
    required_rule_keys=("person", "concept", "start", "type_concept"),
    finish=end_from_days_supply,
)
