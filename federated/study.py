"""A federated study as data: cohort, outcome and covariates named by standard codes.

A study YAML is the contract every site runs unchanged. Concepts are named by
vocabulary + code (``{vocabulary: SNOMED, code: "94222008"}``) and resolved to
concept ids in each site's own vocabulary tables, so one file works across
vocabulary releases. Windows are in days relative to the index date.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import ErrorDetails

from fedomop.federated.errors import StudyError
from fedomop.harmonize.ground.smallcell import DEFAULT_THRESHOLD

STUDIES_DIR = Path(__file__).parent / "studies"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Concept(_Strict):
    """A standard concept named by code; ``descendants`` pulls in its concept_ancestor subtree."""

    vocabulary: str
    code: str
    descendants: bool = True
    label: str | None = None

    @field_validator("code", mode="before")
    @classmethod
    def _code_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Window(_Strict):
    """Days relative to the index date, both ends inclusive (``[-365, 0]`` = the year before)."""

    start: int
    end: int

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) == 2:
            return {"start": value[0], "end": value[1]}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.start > self.end:
            raise ValueError(f"window start {self.start} is after its end {self.end}")
        return self


class Cohort(_Strict):
    """Index event: the first occurrence of a condition in the concept set, optionally with an age limit."""

    concepts: list[Concept] = Field(min_length=1)
    min_age: int | None = None
    max_age: int | None = None


OutcomeDomain = Literal["condition", "death", "measurement", "procedure", "drug", "observation", "episode"]


class ValueRule(_Strict):
    """A measurement outcome counts only when its value crosses a threshold (e.g. PSA > 4 ng/mL)."""

    op: Literal[">", ">=", "<", "<="]
    value: float
    units: list[Concept] = Field(default_factory=list)


class OutcomeEvent(_Strict):
    """One way the outcome can happen: a record of ``domain`` whose concept is in ``concepts``.

    ``death`` needs no concepts (any death); with concepts it is a death with one of those causes.
    ``episode`` matches ``episode_concept_id`` (e.g. Disease Progression) and, when ``objects`` is given,
    also ``episode_object_concept_id`` (the disease).
    """

    domain: OutcomeDomain = "condition"
    concepts: list[Concept] = Field(default_factory=list)
    value: ValueRule | None = None
    objects: list[Concept] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> OutcomeEvent:
        if self.domain != "death" and not self.concepts:
            raise ValueError(f"an outcome event of domain {self.domain} needs `concepts`")
        if self.value is not None and self.domain != "measurement":
            raise ValueError("a `value` rule applies only to measurement outcomes")
        if self.objects and self.domain != "episode":
            raise ValueError("`objects` applies only to episode outcomes")
        return self


class Outcome(_Strict):
    """What is predicted, relative to the index date.

    ``type: binary`` (default): 1 when any outcome event falls within ``window`` days of the index date.
    ``type: time_to_event``: days from the index date to the first outcome event on or after ``window.start``,
    censored at the end of follow-up: the end of the observation period holding the index date
    (``censor: observation_end``, OMOP's own definition of when a person's records are complete) or the
    study's ``study_end`` date (``censor: study_end``, for sites whose deaths come from a registry), and never
    later than ``window.end`` days (the administrative horizon). ``death`` says what a death that is not itself an
    outcome event does: ``censor`` ends follow-up there (status 0), ``competing`` ends it with status 2 (models
    fit the cause-specific hazard, treating it as censored; the status is kept for competing-risk analyses),
    ``event`` makes any death an outcome event (e.g. "recurrence or death").

    ``concepts`` is shorthand for one ``condition`` event; ``events`` lists any-of events from any domain.
    """

    type: Literal["binary", "time_to_event"] = "binary"
    concepts: list[Concept] = Field(default_factory=list)
    events: list[OutcomeEvent] = Field(default_factory=list)
    window: Window
    exclude_prior: bool = True
    require_followup: bool = False
    censor: Literal["observation_end", "study_end"] = "observation_end"
    study_end: date | None = None
    death: Literal["censor", "competing", "event"] = "censor"
    horizons: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Outcome:
        if not self.concepts and not self.events and self.death != "event":
            raise ValueError("an outcome needs `concepts`, `events`, or `death: event`")
        if self.censor == "study_end" and self.study_end is None:
            raise ValueError("`censor: study_end` needs a `study_end` date")
        if any(h <= 0 for h in self.horizons):
            raise ValueError("horizons are days after the index date and must be positive")
        if self.type == "binary" and (self.horizons or self.censor != "observation_end" or self.death == "competing"):
            raise ValueError("`horizons`, `censor` and `death: competing` apply to time_to_event outcomes")
        return self

    @property
    def all_events(self) -> list[OutcomeEvent]:
        """The any-of event list, with the ``concepts`` shorthand and ``death: event`` spelled out."""
        found = list(self.events)
        if self.concepts:
            found.insert(0, OutcomeEvent(domain="condition", concepts=self.concepts))
        if self.death == "event" and not any(e.domain == "death" and not e.concepts for e in found):
            found.append(OutcomeEvent(domain="death"))
        return found

    @property
    def time_to_event(self) -> bool:
        return self.type == "time_to_event"


class ValueConcept(Concept):
    """A categorical measurement answer (value_as_concept_id) and the number it stands for (e.g. stage 3)."""

    value: float


CovariateKind = Literal["age", "sex", "condition", "drug", "procedure", "observation", "measurement"]


class Covariate(_Strict):
    """One feature column.

    ``age``: years at index. ``sex``: 1 when gender is in ``concepts``. ``condition``/``drug``/
    ``procedure``/``observation``: 1 when any record of the set falls in ``window``.
    ``measurement``: the latest value in ``window`` in one of ``units`` (harmonized to standard
    units upstream), taken from value_as_number, or from ``values`` for coded answers (stage).
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: CovariateKind
    concepts: list[Concept] = Field(default_factory=list)
    window: Window = Window(start=-365, end=0)
    units: list[Concept] = Field(default_factory=list)
    values: list[ValueConcept] = Field(default_factory=list)

    @model_validator(mode="after")
    def _needs_concepts(self) -> Covariate:
        if self.kind != "age" and not self.concepts:
            raise ValueError(f"covariate {self.name!r} of kind {self.kind} needs `concepts`")
        return self


class StudySpec(_Strict):
    """The whole study: who is in, what is predicted, from which features, and how sites split."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: str = "1"
    description: str = ""
    seed: int = 2026
    test_fraction: float = Field(default=0.3, gt=0, lt=1)
    min_cohort_size: int = Field(default=20, ge=1)
    small_cell: int = Field(default=DEFAULT_THRESHOLD, ge=1)
    min_outcome_count: int = Field(default=1, ge=0)
    allow_absent_covariates: list[str] = Field(default_factory=list)
    cohort: Cohort
    outcome: Outcome
    covariates: list[Covariate] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> StudySpec:
        names = [c.name for c in self.covariates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"covariate names must be unique, repeated: {', '.join(dupes)}")
        unknown = sorted(set(self.allow_absent_covariates) - set(names))
        if unknown:
            raise ValueError(f"allow_absent_covariates names no covariate: {', '.join(unknown)}")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.covariates]

    def tables(self) -> dict[str, list[str]]:
        """The CDM tables (and columns) this study reads, for the site's governance check."""
        return tables_read(self)

    def data_request(self) -> dict[str, Any]:
        """What the study reads, in the shape the site governance walker understands."""
        return {"tables": self.tables(), "concepts": [c.model_dump() for c in self.all_concepts()]}

    def all_concepts(self) -> list[Concept]:
        found: list[Concept] = list(self.cohort.concepts)
        for event in self.outcome.all_events:
            found += [*event.concepts, *event.objects, *(event.value.units if event.value else [])]
        for covariate in self.covariates:
            found += [*covariate.concepts, *covariate.units, *covariate.values]
        return found

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False), sort_keys=False)


def _location(error: ErrorDetails, raw: dict[str, Any]) -> str:
    """Dotted key path; a covariate is also named, since list indexes are hard to count in YAML."""
    loc = list(error["loc"])
    text = ".".join(str(part) for part in loc) or "(top level)"
    if len(loc) >= 2 and loc[0] == "covariates" and isinstance(loc[1], int):
        covariates = raw.get("covariates")
        if isinstance(covariates, list) and loc[1] < len(covariates) and isinstance(covariates[loc[1]], dict):
            text += f" (covariate {covariates[loc[1]].get('name')!r})"
    return text


def parse_study(text: str, *, source: str = "<study>") -> StudySpec:
    """Parse study YAML text; every problem names the file and the key."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise StudyError(f"not valid YAML: {exc}", where=where, fix="fix the YAML syntax") from exc
    if not isinstance(raw, dict):
        raise StudyError("a study file must be a mapping", where=source, fix="start with `name:`, `cohort:`, ...")
    try:
        return StudySpec.model_validate(raw)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise StudyError(
            f"{first['msg']}{more}",
            where=f"{source}: {_location(first, raw)}",
            fix="see docs/federated.md (study files) for the keys each section takes",
        ) from exc


def load_study(path: str | Path) -> StudySpec:
    """Load a study by path, or by name from federated/studies (``bone_metastasis``)."""
    candidate = Path(path)
    if not candidate.exists() and not candidate.suffix:
        candidate = STUDIES_DIR / f"{path}.yaml"
    if not candidate.exists():
        available = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.yaml")))
        raise StudyError(
            "study file not found", where=str(path), fix=f"give a YAML path or one of the bundled studies: {available}"
        )
    return parse_study(candidate.read_text(encoding="utf-8"), source=str(candidate))


# covariate kind -> (table, concept column, date column)
EVENT_TABLES: dict[str, tuple[str, str, str]] = {
    "condition": ("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "procedure": ("procedure_occurrence", "procedure_concept_id", "procedure_date"),
    "observation": ("observation", "observation_concept_id", "observation_date"),
    "measurement": ("measurement", "measurement_concept_id", "measurement_date"),
}


# domain -> (table, concept column, date column) of an outcome event
OUTCOME_TABLES: dict[str, tuple[str, str, str]] = {
    **EVENT_TABLES,
    "death": ("death", "cause_concept_id", "death_date"),
    "episode": ("episode", "episode_concept_id", "episode_start_date"),
}


def tables_read(study: StudySpec) -> dict[str, list[str]]:
    """Tables and columns the study's SQL reads (declared to the site policy before anything runs)."""
    read: dict[str, set[str]] = {
        "person": {"person_id", "year_of_birth", "gender_concept_id"},
        "condition_occurrence": {"person_id", "condition_concept_id", "condition_start_date"},
        "concept": {"concept_id", "vocabulary_id", "concept_code", "standard_concept", "invalid_reason"},
        "concept_ancestor": {"ancestor_concept_id", "descendant_concept_id"},
    }
    for event in study.outcome.all_events:
        table, concept_col, date_col = OUTCOME_TABLES[event.domain]
        columns = {"person_id", date_col} | ({concept_col} if event.concepts else set())
        if event.value is not None:
            columns |= {"value_as_number", "unit_concept_id"}
        if event.objects:
            columns.add("episode_object_concept_id")
        read.setdefault(table, set()).update(columns)
    if study.outcome.time_to_event and study.outcome.death != "event":
        read.setdefault("death", set()).update({"person_id", "death_date"})
    if study.outcome.require_followup or (study.outcome.time_to_event and study.outcome.censor == "observation_end"):
        read["observation_period"] = {"person_id", "observation_period_start_date", "observation_period_end_date"}
    for covariate in study.covariates:
        if covariate.kind in EVENT_TABLES:
            table, concept_col, date_col = EVENT_TABLES[covariate.kind]
            columns = {"person_id", concept_col, date_col}
            if covariate.kind == "measurement":
                columns |= {"value_as_number", "value_as_concept_id", "unit_concept_id", "measurement_id"}
            read.setdefault(table, set()).update(columns)
    return {table: sorted(columns) for table, columns in read.items()}
