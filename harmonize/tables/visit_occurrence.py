"""visit_occurrence: encounters; other tables point at them through the rule's ``visit`` column."""

import polars as pl

from fedomop.harmonize.tables._target import TableTarget

OPEN_END = "_open_end"  # carried to the end of the build: the visit had no end in the source
NO_END = "_no_end"  # set by the rule evaluator on rows of a rule that declares no ``end:`` at all


def _mark_open_visits(frame: pl.DataFrame) -> pl.DataFrame:
    """visit_end_date is NOT NULL. Two cases, told apart by whether the rule declares an end:

    - the rule reads an end and this record's is empty: the encounter is ongoing (FHIR ``in-progress``). It is
      marked open and given its start for now; :func:`close_open_visits` moves the end to the person's last
      recorded date once every table is built;
    - the rule has no ``end:``: the source does not give visit ends, and the CDM's convention for
      visit_end_date applies (outpatient, emergency and other visits: the end is the start). Extending every such
      visit to the person's last record would turn a day's visit into years.
    """
    declared = ~pl.col(NO_END).fill_null(False) if NO_END in frame.columns else pl.lit(True)
    return frame.with_columns(
        (pl.col("visit_end_date").is_null() & declared).alias(OPEN_END),
        pl.coalesce("visit_end_date", "visit_start_date").alias("visit_end_date"),
    ).drop(NO_END, strict=False)


def close_open_visits(visits: pl.DataFrame, person_last: pl.DataFrame) -> pl.DataFrame:
    """An ongoing encounter (FHIR ``in-progress``, no ``period.end``) lasts until at least the person's last
    recorded date (the end of their observation period), never less than its start: end = start would claim a
    one-day stay. visit_end_datetime stays NULL so an analyst can still tell the visit was open at extraction.
    ``person_last``: person_id, _last (date)."""
    if OPEN_END not in visits.columns:
        return visits
    if not visits.height or not visits.get_column(OPEN_END).any():
        return visits.drop(OPEN_END)
    joined = visits.join(person_last, on="person_id", how="left")
    later = pl.max_horizontal("visit_start_date", pl.col("_last").cast(pl.Date))
    return joined.with_columns(
        pl.when(pl.col(OPEN_END)).then(later).otherwise(pl.col("visit_end_date")).alias("visit_end_date")
    ).drop("_last", OPEN_END)


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
    finish=_mark_open_visits,
    marks_no_end=True,
)
