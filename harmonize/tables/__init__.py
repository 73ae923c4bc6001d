"""One module per OMOP target table; this registry is how the engine finds them (and routes by domain)."""

from __future__ import annotations

from fedomop.harmonize.tables import (
    care_site,
    cdm_source,
    condition_occurrence,
    death,
    device_exposure,
    drug_exposure,
    episode,
    episode_event,
    location,
    measurement,
    note,
    observation,
    observation_period,
    person,
    procedure_occurrence,
    provider,
    specimen,
    visit_occurrence,
)
from fedomop.harmonize.tables._target import TableTarget

# build order: referenced (keyed) tables first, then the events that point at them, then derived tables
TARGETS: dict[str, TableTarget] = {
    m.TARGET.table: m.TARGET
    for m in (
        location,
        care_site,
        provider,
        person,
        visit_occurrence,
        condition_occurrence,
        drug_exposure,
        procedure_occurrence,
        measurement,
        observation,
        device_exposure,
        specimen,
        note,
        death,
        observation_period,
        episode,
        episode_event,
        cdm_source,
    )
}
KEYED_TABLES = ("location", "care_site", "provider", "person", "visit_occurrence")
DOMAIN_TABLES: dict[str, str] = {
    t.domain: name for name, t in TARGETS.items() if t.domain and name != "visit_occurrence"
}
MAPPABLE_TABLES = tuple(name for name, t in TARGETS.items() if not t.derived)

__all__ = ["TARGETS", "KEYED_TABLES", "DOMAIN_TABLES", "MAPPABLE_TABLES", "TableTarget"]
