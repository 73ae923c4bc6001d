"""A federated study as data: cohort, outcome and covariates named by standard codes.

A study YAML is the contract every site runs unchanged. Concepts are named by
vocabulary + code (``{vocabulary: SNOMED, code: "94222008"}``) and resolved to
concept ids in each site's own vocabulary tables, so one file works across
vocabulary releases. Windows are in days relative to the index date.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

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


class Outcome(_Strict):
    """A condition in the concept set occurring within ``window`` days of the index date."""

    concepts: list[Concept] = Field(min_length=1)
    window: Window
    exclude_prior: bool = True
    require_followup: bool = False


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
    cohort: Cohort
    outcome: Outcome
    covariates: list[Covariate] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> StudySpec:
        names = [c.name for c in self.covariates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"covariate names must be unique, repeated: {', '.join(dupes)}")
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
        found: list[Concept] = [*self.cohort.concepts, *self.outcome.concepts]
        for covariate in self.covariates:
            found += [*covariate.concepts, *covariate.units, *covariate.values]
        return found

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False), sort_keys=False)


def _location(error: dict[str, Any], raw: dict[str, Any]) -> str:
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


def tables_read(study: StudySpec) -> dict[str, list[str]]:
    """Tables and columns the study's SQL reads (declared to the site policy before anything runs)."""
    read: dict[str, set[str]] = {
        "person": {"person_id", "year_of_birth", "gender_concept_id"},
        "condition_occurrence": {"person_id", "condition_concept_id", "condition_start_date"},
        "concept": {"concept_id", "vocabulary_id", "concept_code", "standard_concept", "invalid_reason"},
        "concept_ancestor": {"ancestor_concept_id", "descendant_concept_id"},
    }
    if study.outcome.require_followup:
        read["observation_period"] = {"person_id", "observation_period_end_date"}
    for covariate in study.covariates:
        if covariate.kind in EVENT_TABLES:
            table, concept_col, date_col = EVENT_TABLES[covariate.kind]
            columns = {"person_id", concept_col, date_col}
            if covariate.kind == "measurement":
                columns |= {"value_as_number", "value_as_concept_id", "unit_concept_id", "measurement_id"}
            read.setdefault(table, set()).update(columns)
    return {table: sorted(columns) for table, columns in read.items()}
