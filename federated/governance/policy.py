"""A site's governance policy: which studies may read what, with which approved code.

Each cancer centre keeps one YAML policy next to its SuperNode. The policy is the
site's decision, not the researcher's: the ClientApp loads it on every request and
refuses anything it does not allow before a single row is read. Tables and columns
are checked against the official OMOP CDM v5.4 spec so a typo cannot silently widen
(or narrow) what a study may read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from fedomop.federated.errors import PolicyError
from fedomop.harmonize.cdm import load_spec
from fedomop.harmonize.ground.smallcell import DEFAULT_THRESHOLD

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
ALL_COLUMNS = "*"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConceptRef(_Strict):
    """A concept named by its standard code, so a policy never depends on one vocabulary release.

    ``code: "*"`` allows every concept of a vocabulary (e.g. all UCUM units).
    """

    vocabulary: str = Field(min_length=1)
    code: str = Field(min_length=1)

    @field_validator("code", mode="before")
    @classmethod
    def _code_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value

    def key(self) -> tuple[str, str]:
        return (self.vocabulary.upper(), self.code)

    def __str__(self) -> str:
        return f"{self.vocabulary} {self.code}"


class ApprovedApp(_Strict):
    """One approved version of the federated code, by content hash (see :func:`app_hash`)."""

    sha256: str
    note: str = ""

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower_hex(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.lower().removeprefix("sha256:")
            if not _SHA256.match(value):
                raise ValueError("must be 64 hex digits (the output of `fedomop governance hash DIR`)")
        return value


def _sha256_hex(value: object) -> object:
    if isinstance(value, str):
        value = value.lower().removeprefix("sha256:")
        if not _SHA256.match(value):
            raise ValueError("must be 64 hex digits")
    return value


class Approval(_Strict):
    """One reviewed submission: this app bundle, running this study definition, for this person.

    ``app_sha256``: ``fedomop governance hash --fab APP_DIR`` (or ``hash app.fab``); ``study_digest``: ``fedomop governance
    study-digest study.yaml``; ``requester``: the name on the researcher's client certificate.
    The site's executor refuses any run that matches no approval (see approval.py).
    """

    app_sha256: str
    study_digest: str
    requester: str = Field(min_length=1)
    note: str = ""

    _hex = field_validator("app_sha256", "study_digest", mode="before")(_sha256_hex)


class DifferentialPrivacy(_Strict):
    """Local (site-side) Gaussian DP on float model updates: clip the update, add noise.

    sigma = sensitivity * sqrt(2 ln(1.25/delta)) / epsilon per release (the Gaussian
    mechanism); epsilon and delta are written to the audit log with every reply.
    """

    mode: Literal["local"] = "local"
    epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    clipping_norm: float = Field(gt=0)
    sensitivity: float | None = Field(default=None, gt=0)
    # the deployed ClientApp (governance.dp): epsilon/delta are the study's total budget at this site
    noise_multiplier: float | None = Field(default=None, gt=0)  # fixed z; default: calibrated to the budget
    releases: int | None = Field(default=None, ge=1)  # updates the budget is calibrated for; default limits.max_rounds

    @property
    def noise_sigma(self) -> float:
        import math

        sensitivity = self.sensitivity if self.sensitivity is not None else self.clipping_norm
        return sensitivity * math.sqrt(2 * math.log(1.25 / self.delta)) / self.epsilon


class SettingsLimits(_Strict):
    """The site's ceiling on what one run may ask of it: the bounds :func:`check_settings` enforces.

    Kept as data in the policy so each site decides how much compute a researcher may
    request (``rounds=10**9`` or ``epochs=10**7`` would otherwise occupy a site for days).
    ``wall_time_s`` is the most one message may take at the site.
    """

    max_rounds: int = Field(default=200, ge=1)
    max_epochs: int = Field(default=50, ge=1)
    max_depth: int = Field(default=12, ge=1)
    max_local_rounds: int = Field(default=50, ge=1)
    wall_time_s: float = Field(default=3600.0, gt=0)


class StudyPolicy(_Strict):
    """What one study may do at this site."""

    approved_apps: list[ApprovedApp] = Field(default_factory=list)
    approvals: list[Approval] = Field(default_factory=list)
    tables: dict[str, list[str] | Literal["*"]] = Field(default_factory=dict)
    concept_sets: list[ConceptRef] = Field(default_factory=list)
    min_cohort_size: int | None = Field(default=None, ge=1)
    small_cell_threshold: int | None = Field(default=None, ge=1)
    differential_privacy: DifferentialPrivacy | None = None

    def approves(self, sha256: str) -> bool:
        known = {app.sha256 for app in self.approved_apps} | {a.app_sha256 for a in self.approvals}
        return sha256.lower() in known

    def allowed_columns(self, table: str) -> set[str] | None:
        """Columns of ``table`` this study may read (None: every column of the table)."""
        columns = self.tables[table]
        return None if columns == ALL_COLUMNS else set(columns)

    def allowed_concepts(self) -> set[tuple[str, str]]:
        return {concept.key() for concept in self.concept_sets}


class SitePolicy(_Strict):
    """The whole policy file of one site."""

    site: str = Field(min_length=1)
    audit_log: Path
    min_cohort_size: int = Field(default=20, ge=1)
    small_cell_threshold: int = Field(default=DEFAULT_THRESHOLD, ge=1)
    limits: SettingsLimits = Field(default_factory=SettingsLimits)
    # a site-alone model is fitted to this site's rows only; by default it is evaluated here and only
    # its held-out metrics leave (its normalisation means alone would give away small-cohort sums)
    release_site_alone_models: bool = False
    # true: this site joins histogram XGBoost's allreduce only over mutual TLS (the hub started with --certs);
    # a hub that asks for a plaintext exchange is refused before the site dials it
    require_allreduce_tls: bool = False
    studies: dict[str, StudyPolicy] = Field(default_factory=dict)
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The policy file this was loaded from (None when built in code)."""
        return self._source

    @model_validator(mode="after")
    def _tables_and_columns_exist(self) -> SitePolicy:
        spec = load_spec()
        for study_name, study in self.studies.items():
            for table, columns in study.tables.items():
                if table not in spec.tables:
                    raise ValueError(
                        f"studies.{study_name}.tables: {table!r} is not an OMOP CDM v5.4 table "
                        f"(valid: {', '.join(sorted(spec.tables))})"
                    )
                if columns == ALL_COLUMNS:
                    continue
                valid = spec.tables[table].column_names
                unknown = [c for c in columns if c not in valid]
                if unknown:
                    raise ValueError(
                        f"studies.{study_name}.tables.{table}: unknown column(s) {', '.join(unknown)} "
                        f"(valid: {', '.join(valid)})"
                    )
        return self

    def study(self, name: str) -> StudyPolicy:
        """The policy of one study, or a PolicyError naming the studies this site allows."""
        try:
            return self.studies[name]
        except KeyError:
            raise PolicyError(
                f"study {name!r} is not allowed at site {self.site!r}",
                where=f"{self.source or 'policy'}: studies",
                fix=f"ask the site to add it; studies allowed here: {', '.join(sorted(self.studies)) or 'none'}",
            ) from None

    def min_cohort(self, study: str) -> int:
        return self.study(study).min_cohort_size or self.min_cohort_size

    def small_cell(self, study: str) -> int:
        return self.study(study).small_cell_threshold or self.small_cell_threshold


def load_policy(path: Path | str) -> SitePolicy:
    """Read and validate a site policy; a relative ``audit_log`` is taken relative to the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(
            "site policy file not found", where=str(path), fix="pass the site's policy YAML (see docs/governance.md)"
        ) from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"not valid YAML: {exc}", where=str(path), fix="fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise PolicyError("a policy must be a mapping", where=str(path), fix="start with `site:` and `audit_log:`")
    try:
        policy = SitePolicy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(_describe(exc), where=str(path), fix=_fix_for(exc)) from None
    audit_log = policy.audit_log if policy.audit_log.is_absolute() else path.parent / policy.audit_log
    loaded = policy.model_copy(update={"audit_log": audit_log.resolve()})
    loaded._source = path.resolve()
    return loaded


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def _fix_for(exc: ValidationError) -> str:
    kinds = {error["type"] for error in exc.errors()}
    if "extra_forbidden" in kinds:
        return (
            "remove the unknown key; valid keys: site, audit_log, min_cohort_size, small_cell_threshold, limits, "
            "release_site_alone_models, require_allreduce_tls, "
            "studies; limits: max_rounds, max_epochs, max_depth, max_local_rounds, wall_time_s; "
            "per study: approved_apps, approvals, tables, concept_sets, min_cohort_size, small_cell_threshold, "
            "differential_privacy"
        )
    return "correct the value named above (see docs/governance.md for the policy format)"
