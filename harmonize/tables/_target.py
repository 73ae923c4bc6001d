"""What a table module declares: its OMOP table, the domain it receives, and how engine slots become columns.

The engine evaluates every rule into the same internal slot columns (``_person_id``, ``_concept_id``,
``_start_date`` ...). A table module only says which OMOP column each slot fills and adds its own defaults,
so routing a record to another table by its concept's domain is a rename, not new code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

# rule keys (fedomop.harmonize.mapping.models.Rule) -> the internal slot columns they produce
RULE_SLOTS: dict[str, tuple[str, ...]] = {
    "id": ("_source_key",),
    "person": ("_person_id",),
    "visit": ("_visit_id",),
    "provider": ("_provider_id",),
    "care_site": ("_care_site_id",),
    "location": ("_location_id",),
    "concept": ("_concept_id", "_source_value", "_source_concept_id"),
    "start": ("_start_date", "_start_datetime"),
    "end": ("_end_date", "_end_datetime"),
    "value": ("_value", "_unit_concept_id", "_unit_source_value", "_value_source_value"),
    "type_concept": ("_type_concept_id",),
}
RULE_SLOTS["unpivot"] = RULE_SLOTS["concept"] + RULE_SLOTS["value"]  # a wide rule's columns give both


def _unchanged(frame: pl.DataFrame) -> pl.DataFrame:
    return frame


@dataclass(frozen=True)
class TableTarget:
    """An OMOP table as a destination of mapping rules."""

    table: str
    columns: dict[str, str]  # internal slot column -> OMOP column
    domain: str | None = None  # standard-concept domain routed here (event tables)
    required_rule_keys: tuple[str, ...] = ()
    finish: Callable[[pl.DataFrame], pl.DataFrame] = _unchanged  # table defaults on OMOP-named columns
    derived: bool = False  # built by the engine from other tables, not by rules
    extra_rule_keys: tuple[str, ...] = field(default=())
    one_per_person: bool = False  # death: keyed by person_id, at most one row per person
    # whether ``finish`` tells a rule without ``end:`` from an empty end (visit_occurrence): its rules' rows then
    # carry a NO_END marker; other tables never see one
    marks_no_end: bool = False

    @property
    def allowed_rule_keys(self) -> set[str]:
        keys = {"source", "when", "fields", "route_by_domain", "id", *self.extra_rule_keys}
        if self.domain:  # event rows may be routed to any event table, so every event slot is accepted
            keys |= {"value", "end", "visit", "provider"}
        for rule_key, slots in RULE_SLOTS.items():
            if any(s in self.columns for s in slots):
                keys.add(rule_key)
        return keys

    @property
    def id_column(self) -> str:
        """The column that identifies a row (its primary key; person_id for one-per-person tables)."""
        from fedomop.harmonize.cdm import load_spec

        pk = load_spec().table(self.table).primary_key
        if pk:
            return pk.name
        return "person_id" if self.one_per_person else ""


def event_columns(concept: str) -> dict[str, str]:
    """Slot -> column names shared by the clinical event tables (condition_, drug_, ...)."""
    return {
        "_person_id": "person_id",
        "_visit_id": "visit_occurrence_id",
        "_provider_id": "provider_id",
        "_concept_id": f"{concept}_concept_id",
        "_source_value": f"{concept}_source_value",
        "_source_concept_id": f"{concept}_source_concept_id",
        "_type_concept_id": f"{concept}_type_concept_id",
    }


def default_end_to_start(start: str, end: str) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Tables whose end date is required: a missing end is the start (OHDSI convention for single-day records)."""

    def finish(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(pl.coalesce(end, start).alias(end))

    return finish
