"""Typed models of a site mapping YAML: the data steward's declaration of how an extract becomes OMOP.

Every model forbids unknown keys and every mode is a ``Literal``, so a typo fails at load time with the key path
and the valid choices instead of silently doing nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator

OnUnmapped = Literal["concept_zero", "quarantine", "fail"]
SourceFormat = Literal["csv", "parquet", "fhir_ndjson", "fhir_bundle"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- field expressions --------------------------------------------------------------------------------


class ColumnExpr(Strict):
    """Copy a source column (``gender_source_value: sex`` is shorthand for ``{column: sex}``)."""

    column: str
    cast: Literal["string", "integer", "float"] | None = None
    decode: Literal["base64"] | None = None  # e.g. a FHIR attachment's data (UTF-8 text inside)


class ConstantExpr(Strict):
    """A fixed value; a hard-coded concept id must carry its concept ``name`` (checked against the vocabulary)."""

    constant: int | float | str | None
    name: str | None = None


class DateExpr(Strict):
    """Parse a source column as a date or datetime; ``format`` overrides the source's ``date_format``."""

    date: str
    format: str | None = None


class ConceptConstant(Strict):
    concept_id: int
    name: str


class MapExpr(Strict):
    """Translate a source column's values through a small table (sex codes -> gender concepts)."""

    map: str
    values: dict[str, ConceptConstant | int | float | str]
    default: ConceptConstant | int | float | str | None = None


class ConceptFieldExpr(Strict):
    """A coded source value as the standard concept it maps to (``value_as_concept_id`` from a FHIR
    valueCodeableConcept, ``route_concept_id`` from a dosage route): the code column and its vocabulary, resolved
    through the site vocabulary ("Maps to"; the lowest concept id when a code has several targets). A code
    that maps to nothing gives 0; no code gives NULL."""

    concept: str
    vocabulary: str | None = None
    vocabulary_column: str | None = None
    system_column: str | None = None
    codings: str | None = None  # a CodeableConcept column: the first coding that maps wins (see CodeExpr)

    @model_validator(mode="after")
    def _one_vocabulary(self) -> ConceptFieldExpr:
        given = [k for k in ("vocabulary", "vocabulary_column", "system_column") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of vocabulary, vocabulary_column, system_column")
        return self


def _field_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("column", "constant", "date", "map", "concept"):
            if key in value:
                return key
    return None


def _shorthand(value: Any) -> Any:
    return {"column": value} if isinstance(value, str) else value


FieldExpr = Annotated[
    Annotated[ColumnExpr, Tag("column")]
    | Annotated[ConstantExpr, Tag("constant")]
    | Annotated[DateExpr, Tag("date")]
    | Annotated[MapExpr, Tag("map")]
    | Annotated[ConceptFieldExpr, Tag("concept")],
    Discriminator(
        _field_tag,
        custom_error_type="field_expression",
        custom_error_message="a field expression is a column name or one of {column: ...}, {constant: ..., name: ...},"
        " {date: ...}, {map: ..., values: ...}, {concept: ..., system_column: ...}",
    ),
    BeforeValidator(_shorthand),
]


class CodeExpr(Strict):
    """A source code to look up: the code column and its vocabulary (fixed, from a column, or a FHIR system URL)."""

    code: str
    vocabulary: str | None = None
    vocabulary_column: str | None = None
    system_column: str | None = None
    source_value: str | None = None  # column for *_source_value when it is not the code itself
    # a column naming the thing in words when there is no code (a FHIR CodeableConcept's text, a reference's
    # display): the *_source_value then, with concept 0, so a free-text drug is kept as what the source says
    text: str | None = None
    required: bool = False  # a record with neither code nor text is quarantined ("missing code"), not loaded as 0
    # a column holding the record's CodeableConcept as JSON text ({"coding": [{"system": URL, "code": ...}, ...]}):
    # where it has a value, every coding is resolved (system URL -> vocabulary through fhir_systems) and the first,
    # in document order, that maps to a standard concept gives the code, vocabulary and source value, else the
    # first coding (concept 0); where it is empty, ``code`` and its vocabulary as usual. The standard FHIR mapping
    # fills it only for a CodeableConcept with several codings, so the usual single coding costs nothing more.
    codings: str | None = None

    @model_validator(mode="after")
    def _one_vocabulary(self) -> CodeExpr:
        given = [k for k in ("vocabulary", "vocabulary_column", "system_column") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of vocabulary, vocabulary_column, system_column")
        return self


class ValueExpr(Strict):
    """A numeric result and its unit; conversion to the standard unit comes from the mapping's ``units``."""

    number: str
    unit: str | None = None
    unit_constant: str | None = None
    required: bool = False  # a record with neither number nor text is quarantined ("missing value")
    text: str | None = None  # value_source_value when there is no number (a coded or string result)


class Filter(Strict):
    """Which source rows a rule applies to (rows no rule takes are quarantined, never dropped).

    The conditions on ``column`` all hold; ``and`` adds conditions on other columns that must hold too (an
    Observation that has components *and* no value of its own)."""

    column: str
    equals: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")
    not_null: bool | None = None
    is_null: bool | None = None
    and_: list[Filter] = Field(default_factory=list, alias="and")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _tests_something(self) -> Filter:
        """A condition that tests nothing would select every row (an ``exclude`` would drop the whole source), and
        ``not_null: false`` reads like "is null" but tested nothing: both are refused when the mapping loads."""
        for name in ("not_null", "is_null"):
            if getattr(self, name) is False:
                other = "is_null" if name == "not_null" else "not_null"
                raise ValueError(f"{name}: false tests nothing; write {other}: true for the opposite")
        if self.in_ is not None and not self.in_:
            raise ValueError("in: [] matches no row; list the values, or remove the condition")
        if self.equals is None and self.in_ is None and not self.not_null and not self.is_null:
            raise ValueError(f"column {self.column!r} has no test: give equals, in, not_null: true or is_null: true")
        if self.not_null and self.is_null:
            raise ValueError("not_null and is_null together match no row")
        return self

    def columns(self) -> list[str]:
        """Every source column the filter reads, ``and`` conditions included."""
        return [self.column, *(c for f in self.and_ for c in f.columns())]

    def describe(self) -> str:
        """The condition in words (for ``fedomop mapping doc``)."""
        parts = []
        if self.equals is not None:
            parts.append(f"= {self.equals}")
        if self.in_ is not None:
            parts.append(f"in {self.in_}")
        if self.not_null:
            parts.append("is not empty")
        if self.is_null:
            parts.append("is empty")
        own = f"`{self.column}` {' and '.join(parts) or 'is any value'}"
        return " and ".join([own, *(f.describe() for f in self.and_)])


class EachElement(Strict):
    """A FHIR source read as one record per element of a repeating element (Observation.component: one
    measurement per component, the panel kept in lineage as ``<id>/component/<i>``)."""

    element: str
    replaces: list[str] = Field(default_factory=list)  # resource fields the element's own replace (value = value[x])


class Lookup(Strict):
    """Fill this source's columns from the record another source holds under a referenced id: a
    MedicationRequest's ``medicationReference`` to a Medication in the same Bundle (urn:uuid via fullUrl) or in
    the same export (``Medication/<id>``). A column keeps its own value where it has one; the looked-up source's
    records are not events (exclude them by rule, so each is still accounted for)."""

    source: str  # the source holding the referenced records (e.g. Medication resources)
    key: str  # this source's column with the referenced id (a path ending in resolve_id())
    on: str = "id"  # the other source's column the key matches
    columns: dict[str, str]  # this source's column <- the other source's column, where this one is empty


class Exclude(Filter):
    """Records a source holds but the mapping deliberately leaves out (the FHIR-to-OMOP IG's status filters:
    entered-in-error, not-done, refuted ...). No rule sees them; each is accounted as "excluded by rule: <reason>"
    in fedomop_quarantine, so read = loaded + excluded + quarantined still holds record by record."""

    reason: str


class WideColumn(Strict):
    """One column of a wide export (one column per test): each row's value in it becomes one OMOP row whose
    source code is constant for the column. ``code`` defaults to the column's name, so a local wide export can
    be mapped code by code through the site's source_to_concept_map under a site vocabulary."""

    code: str | None = None
    vocabulary: str  # the code's vocabulary: a standard one (LOINC) or the site's own (mapped by the concept map)
    unit: str | None = None  # the column's unit as the site writes it (``unit_aliases`` and ``units`` apply)
    unit_column: str | None = None  # or a column holding each row's unit

    @model_validator(mode="after")
    def _one_unit(self) -> WideColumn:
        if self.unit is not None and self.unit_column is not None:
            raise ValueError("give unit or unit_column, not both")
        return self


class Rule(Strict):
    """How one source feeds one OMOP table. Which slots a table accepts is declared by its table module.

    ``unpivot`` maps a wide export: each listed column gives one OMOP row per source row where it holds a
    value, with the column's own code, value and unit (the rule then has no ``concept`` or ``value``).
    """

    source: str
    when: Filter | None = None
    id: str | None = None  # the source record's own id (duplicate detection, foreign-key lookups)
    person: str | None = None  # column holding the person's source id
    visit: str | None = None  # column holding the visit's source id
    provider: str | None = None
    care_site: str | None = None
    location: str | None = None
    concept: CodeExpr | None = None
    start: DateExpr | None = None
    end: DateExpr | None = None
    value: ValueExpr | None = None
    type_concept: ConstantExpr | None = None
    route_by_domain: bool = True
    fields: dict[str, FieldExpr] = Field(default_factory=dict)
    unpivot: dict[str, WideColumn] | None = None  # source column -> its constant code, vocabulary and unit

    @model_validator(mode="after")
    def _unpivot_replaces_concept_and_value(self) -> Rule:
        if self.unpivot is not None:
            if not self.unpivot:
                raise ValueError("unpivot lists no column")
            if self.concept is not None or self.value is not None:
                raise ValueError("an unpivot rule takes its concept and value from each column: drop concept/value")
        return self


# -- sources --------------------------------------------------------------------------------------------


class Source(Strict):
    """One logical source: files (a glob relative to the source folder) and how to read them."""

    format: SourceFormat
    files: str
    # no matching file is an error (else the source is absent: 0 records, named in the summary); unset: required
    # when ``files`` names one file (no glob character), since a missing named file is a typo or a failed export
    required: bool | None = None
    # tabular
    delimiter: str = ","
    encoding: Literal["utf-8", "utf8", "latin-1", "latin1", "iso-8859-1", "cp1252", "windows-1252"] = "utf-8"
    date_format: str = "iso"
    decimal: Literal[".", ","] = "."
    null_values: list[str] = Field(default_factory=lambda: [""])
    columns: list[str] | dict[str, str] | None = None  # tabular: expected header; FHIR: name -> path expression
    # FHIR
    resource_type: str | None = None
    validation: Literal["structural", "full"] = "structural"
    exclude: list[Exclude] = Field(default_factory=list)  # records left out by rule (checked in order)
    each: EachElement | None = None  # FHIR: one record per element of a repeating element
    lookup: list[Lookup] = Field(default_factory=list)  # columns filled from a referenced record of another source

    @model_validator(mode="after")
    def _lookup_reads_known_columns(self) -> Source:
        names = list(self.columns) if self.columns is not None else []
        for item in self.lookup:
            for column in (item.key, *item.columns):
                if column not in names:
                    raise ValueError(f"lookup: column {column!r} is not one of this source's columns {names}")
        return self

    @model_validator(mode="after")
    def _exclude_reads_known_columns(self) -> Source:
        names = list(self.columns) if self.columns is not None else None
        for rule in self.exclude:
            for column in rule.columns():
                if names is not None and column not in names:
                    raise ValueError(f"exclude: column {column!r} is not one of this source's columns {names}")
        return self

    @model_validator(mode="after")
    def _fhir_needs_type(self) -> Source:
        if self.format.startswith("fhir"):
            if not self.resource_type:
                raise ValueError("a FHIR source needs resource_type (e.g. Condition)")
            if not isinstance(self.columns, dict):
                raise ValueError("a FHIR source needs columns: {name: path expression}")
        elif isinstance(self.columns, dict):
            raise ValueError("a tabular source lists its columns as a list of header names")
        return self

    @property
    def names_one_file(self) -> bool:
        """``files`` is a file name, not a glob (no ``*``, ``?`` or ``[``)."""
        return not any(c in self.files for c in "*?[")

    @property
    def must_exist(self) -> bool:
        """Whether a run with no file for this source is an error (``required``, else: ``files`` names one file)."""
        return self.required if self.required is not None else self.names_one_file

    @property
    def is_fhir(self) -> bool:
        return self.format.startswith("fhir")


class FhirInventory(Strict):
    """FHIR files whose every resource must be accounted for, including resource types no source maps."""

    format: Literal["fhir_ndjson", "fhir_bundle"]
    files: str


# -- site-level settings --------------------------------------------------------------------------------


class UnitConversion(Strict):
    """Convert values to the standard UCUM unit, for one analyte (``concept``) or for any analyte."""

    standard: str
    factors: dict[str, float] = Field(default_factory=dict)  # source unit -> multiply by
    concept: ConceptRef | None = None
    range: tuple[float, float] | None = None  # plausible range in the standard unit; outside -> quarantine

    @model_validator(mode="after")
    def _range_in_order(self) -> UnitConversion:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range {list(self.range)} is reversed: write [low, high]")
        return self


class ConceptRef(Strict):
    """A standard concept named by vocabulary + code (resolved in the site's vocabulary), with its name."""

    vocabulary: str
    code: str
    name: str


class Vocabulary(Strict):
    folder: str  # relative to the mapping file; --vocabulary overrides
    source_to_concept_map: str | None = None  # relative to the source folder
    fhir_systems: dict[str, str] = Field(default_factory=dict)  # system URL -> OMOP vocabulary_id
    extensions: list[str] = Field(default_factory=list)  # site concept folders (ids > 2e9) added to `folder`


class Episodes(Strict):
    """Oncology extension: one Disease First Occurrence episode per person and cancer condition concept."""

    cancer_concepts: list[ConceptRef]
    episode_concept: ConstantExpr
    type_concept: ConstantExpr


class ObservationPeriod(Strict):
    type_concept: ConstantExpr


class CdmSourceInfo(Strict):
    cdm_source_name: str
    cdm_source_abbreviation: str
    cdm_holder: str = "fedomop"
    source_description: str | None = None
    source_release_date: str | None = None
    cdm_release_date: str | None = None
    vocabulary_version: str | None = None


class ColumnBounds(Strict):
    """Plausible dates for one source column: rows outside are quarantined as implausible."""

    earliest: dt.date | None = None
    latest: dt.date | None = None


class DateBounds(Strict):
    """Plausible dates (docs/mapping.md "Date bounds"): a birth before ``birth_earliest``, an event before
    ``event_earliest`` or an event start after the run date + ``future_margin_days`` is quarantined, not loaded
    (2099-01-01 and 0001-01-01 are placeholders, not events). ``columns`` overrides per source column."""

    birth_earliest: dt.date = dt.date(1850, 1, 1)
    event_earliest: dt.date = dt.date(1900, 1, 1)
    future_margin_days: int = Field(default=1, ge=0)
    columns: dict[str, ColumnBounds] = Field(default_factory=dict)


def _extension_url(url: str) -> str:
    """A modifierExtension URL as FHIR writes ``Extension.url``: absolute (``http(s)://host/...`` or ``urn:``)."""
    if not re.fullmatch(r"(https?://[^\s/]+/\S*|urn:[a-z0-9-]+:\S+)", url):
        raise ValueError(
            f"{url!r} is not an extension URL: write the absolute URL the resources carry in "
            "modifierExtension.url (https://... or urn:...)"
        )
    return url


def _unique_urls(urls: list[str]) -> list[str]:
    repeated = sorted({url for url in urls if urls.count(url) > 1})
    if repeated:
        raise ValueError(f"listed twice: {', '.join(repeated)}")
    return urls


ExtensionUrl = Annotated[str, AfterValidator(_extension_url)]


class Mapping(Strict):
    """A whole site mapping (after ``include:`` files are merged)."""

    site: str
    cdm_source: CdmSourceInfo
    vocabulary: Vocabulary
    on_unmapped: OnUnmapped = "concept_zero"
    sources: dict[str, Source]
    fhir_inventory: list[FhirInventory] = Field(default_factory=list)
    # modifierExtension URLs the mapping handles (e.g. by an exclude: rule); a FHIR resource carrying any other
    # modifierExtension is quarantined (FHIR R4 Extensibility: it must not be read as if the extension were absent)
    fhir_understood_modifier_extensions: Annotated[list[ExtensionUrl], AfterValidator(_unique_urls)] = Field(
        default_factory=list
    )
    units: list[UnitConversion] = Field(default_factory=list)
    unit_aliases: dict[str, str] = Field(default_factory=dict)  # unit as the site writes it -> UCUM code
    tables: dict[str, list[Rule]]
    observation_period: ObservationPeriod | None = None
    episodes: Episodes | None = None
    include: list[str] = Field(default_factory=list)
    date_bounds: DateBounds = Field(default_factory=DateBounds)
    # OMOP table -> least share of its records mapped to a standard concept; below it `fedomop map` exits 1.
    min_coverage: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)


UnitConversion.model_rebuild()
