"""Small OMOP sites with a known, non-linear bone-metastasis risk, for tests and benchmarks.

Each site is a real OMOP CDM v5.4 DuckDB/PostgreSQL database (schema from the spec,
rows through ``Database.load_arrow``) holding persons, a first cancer diagnosis,
labs in standard units, clinical stage, a bone-protective drug and the outcome
(SNOMED 94222008) drawn from a risk model with thresholds and interactions, so a
tree model can learn it and a linear one cannot quite. Sites are non-IID: case mix,
age, lab missingness and stage distribution differ.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.ground.db import Database, connect

TYPE_EHR = 32817
# (concept_id, name, domain, vocabulary, class, code)
CONCEPTS: list[tuple[int, str, str, str, str, str]] = [
    (4112853, "Malignant tumor of breast", "Condition", "SNOMED", "Clinical Finding", "254837009"),
    (200962, "Primary malignant neoplasm of prostate", "Condition", "SNOMED", "Clinical Finding", "93974005"),
    (4115276, "Non-small cell lung cancer", "Condition", "SNOMED", "Clinical Finding", "254637007"),
    (4110591, "Small cell carcinoma of lung", "Condition", "SNOMED", "Clinical Finding", "254632001"),
    (78097, "Secondary malignant neoplasm of bone", "Condition", "SNOMED", "Clinical Finding", "94222008"),
    (3035995, "Alkaline phosphatase", "Measurement", "LOINC", "Lab Test", "6768-6"),
    (3006906, "Calcium [Mass/volume] in Serum or Plasma", "Measurement", "LOINC", "Lab Test", "17861-6"),
    (3013603, "Prostate specific Ag", "Measurement", "LOINC", "Lab Test", "2857-1"),
    (3000963, "Hemoglobin [Mass/volume] in Blood", "Measurement", "LOINC", "Lab Test", "718-7"),
    (3016723, "Creatinine [Mass/volume] in Serum or Plasma", "Measurement", "LOINC", "Lab Test", "2160-0"),
    (3022698, "Stage group.clinical Cancer", "Measurement", "LOINC", "Clinical Observation", "21908-9"),
    (8645, "unit per liter", "Unit", "UCUM", "Unit", "[U]/L"),
    (8840, "milligram per deciliter", "Unit", "UCUM", "Unit", "mg/dL"),
    (8842, "nanogram per milliliter", "Unit", "UCUM", "Unit", "ng/mL"),
    (8713, "gram per deciliter", "Unit", "UCUM", "Unit", "g/dL"),
    (40241455, "zoledronic acid 0.04 MG/ML Injection", "Drug", "RxNorm", "Quant Clinical Drug", "1114085"),
    (8507, "MALE", "Gender", "Gender", "Gender", "M"),
    (8532, "FEMALE", "Gender", "Gender", "Gender", "F"),
]
CANCERS = {"breast": 4112853, "prostate": 200962, "nsclc": 4115276, "sclc": 4110591}
BONE_METASTASIS = 78097
LABS = {  # name: (concept, unit, mean, sd)
    "alp": (3035995, 8645, 95.0, 35.0),
    "calcium": (3006906, 8840, 9.5, 0.6),
    "psa": (3013603, 8842, 6.0, 8.0),
    "hb": (3000963, 8713, 13.0, 1.6),
    "creatinine": (3016723, 8840, 0.95, 0.3),
}
STAGE = 3022698
ZOLEDRONIC = 40241455


@dataclass(frozen=True)
class SiteProfile:
    """How one synthetic site differs from the others (non-IID)."""

    name: str
    persons: int
    case_mix: tuple[float, float, float, float]  # breast, prostate, nsclc, sclc
    age_shift: float = 0.0
    stage_bias: float = 0.0
    lab_missing: float = 0.1


DEFAULT_SITES = (
    SiteProfile("site_a", 700, (0.55, 0.15, 0.25, 0.05), age_shift=-3, stage_bias=-0.3, lab_missing=0.05),
    SiteProfile("site_b", 550, (0.15, 0.55, 0.25, 0.05), age_shift=4, stage_bias=0.2, lab_missing=0.1),
    SiteProfile("site_c", 500, (0.3, 0.2, 0.4, 0.1), age_shift=2, stage_bias=0.4, lab_missing=0.2),
    SiteProfile("site_d", 450, (0.35, 0.35, 0.2, 0.1), age_shift=0, stage_bias=0.0, lab_missing=0.15),
)


def true_risk(cancer: np.ndarray, stage: np.ndarray, labs: dict[str, np.ndarray], age: np.ndarray) -> np.ndarray:
    """Probability of bone metastasis within a year: thresholds and interactions, not a straight line."""
    alp = np.nan_to_num(labs["alp"], nan=95.0)
    calcium = np.nan_to_num(labs["calcium"], nan=9.5)
    psa = np.nan_to_num(labs["psa"], nan=2.0)
    hb = np.nan_to_num(labs["hb"], nan=13.0)
    prostate = cancer == CANCERS["prostate"]
    breast = cancer == CANCERS["breast"]
    logit = (
        -3.2
        + 1.6 * (stage >= 3)
        + 1.2 * (stage == 4)
        + 1.4 * (alp > 130)
        + 0.9 * (calcium > 10.2)
        + 1.8 * (prostate & (psa > 20))
        + 0.8 * (breast & (stage >= 3) & (alp > 110))
        - 0.6 * (hb > 12.5)
        + 0.02 * np.maximum(age - 70, 0)
    )
    return 1.0 / (1.0 + np.exp(-logit))


def _person_rows(profile: SiteProfile, rng: np.random.Generator, offset: int) -> dict[str, np.ndarray]:
    n = profile.persons
    cancer = rng.choice(list(CANCERS.values()), size=n, p=profile.case_mix)
    male = np.where(
        cancer == CANCERS["prostate"], True, np.where(cancer == CANCERS["breast"], False, rng.random(n) < 0.55)
    )
    age = np.clip(rng.normal(64 + profile.age_shift, 11, n), 18, 95).round()
    stage = np.clip(np.round(rng.normal(2.4 + profile.stage_bias, 1.0, n)), 1, 4)
    labs: dict[str, np.ndarray] = {}
    for name, (_, _, mean, sd) in LABS.items():
        value: np.ndarray = rng.normal(mean, sd, n) + (stage - 2.5) * sd * 0.35
        if name == "psa":
            value = np.where(
                cancer == CANCERS["prostate"],
                rng.lognormal(2.0 + 0.4 * (stage - 2), 1.0, n),
                rng.lognormal(0.0, 0.5, n),
            )
        value = np.round(np.maximum(value, 0.01), 2)
        missing = rng.random(n) < profile.lab_missing
        if name == "psa":
            missing |= cancer != CANCERS["prostate"]
        labs[name] = np.where(missing, np.nan, value)
    zoledronic = rng.random(n) < 0.12 + 0.1 * (stage == 4)
    risk = true_risk(cancer, stage, labs, age)
    outcome = rng.random(n) < risk
    index_offset = rng.integers(0, 1500, n)
    return {
        "person_id": np.arange(offset + 1, offset + n + 1),
        "cancer": cancer,
        "male": male,
        "age": age,
        "stage": stage,
        "zoledronic": zoledronic,
        "outcome": outcome,
        "risk": risk,
        "index_offset": index_offset,
        "outcome_delay": rng.integers(20, 360, n),
        **{f"lab_{k}": v for k, v in labs.items()},
    }


def _concept_frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    concept = pl.DataFrame(
        [
            {
                "concept_id": cid,
                "concept_name": name,
                "domain_id": domain,
                "vocabulary_id": vocab,
                "concept_class_id": cls,
                "standard_concept": "S",
                "concept_code": code,
                "valid_start_date": dt.date(1970, 1, 1),
                "valid_end_date": dt.date(2099, 12, 31),
            }
            for cid, name, domain, vocab, cls, code in CONCEPTS
        ]
    )
    ancestor = pl.DataFrame(
        {
            "ancestor_concept_id": [c[0] for c in CONCEPTS],
            "descendant_concept_id": [c[0] for c in CONCEPTS],
            "min_levels_of_separation": [0] * len(CONCEPTS),
            "max_levels_of_separation": [0] * len(CONCEPTS),
        }
    )
    return concept, ancestor


def _date(days: np.ndarray) -> list[dt.date]:
    base = dt.date(2018, 1, 1)
    return [base + dt.timedelta(days=int(d)) for d in days]


def build_site(db: Database, profile: SiteProfile, *, seed: int = 7, offset: int = 0) -> dict[str, np.ndarray]:
    """Write one synthetic site into ``db`` (CDM tables created if needed); returns the per-person truth."""
    create_cdm(db.engine)
    rng = np.random.default_rng([seed, sum(profile.name.encode())])
    p = _person_rows(profile, rng, offset)
    n = len(p["person_id"])
    index_days = p["index_offset"]
    concept, ancestor = _concept_frames()
    db.load_arrow("concept", concept)
    db.load_arrow("concept_ancestor", ancestor)
    db.load_arrow(
        "person",
        pl.DataFrame(
            {
                "person_id": p["person_id"],
                "gender_concept_id": np.where(p["male"], 8507, 8532),
                "year_of_birth": (2018 + index_days // 365 - p["age"]).astype(int),
                "race_concept_id": np.zeros(n, dtype=int),
                "ethnicity_concept_id": np.zeros(n, dtype=int),
            }
        ),
    )
    db.load_arrow(
        "observation_period",
        pl.DataFrame(
            {
                "observation_period_id": p["person_id"],
                "person_id": p["person_id"],
                "observation_period_start_date": _date(index_days - 400),
                "observation_period_end_date": _date(index_days + 800),
                "period_type_concept_id": np.full(n, TYPE_EHR),
            }
        ),
    )
    has_outcome = p["outcome"]
    conditions = pl.DataFrame(
        {
            "person_id": np.concatenate([p["person_id"], p["person_id"][has_outcome]]),
            "condition_concept_id": np.concatenate([p["cancer"], np.full(int(has_outcome.sum()), BONE_METASTASIS)]),
            "condition_start_date": _date(np.concatenate([index_days, (index_days + p["outcome_delay"])[has_outcome]])),
        }
    ).with_columns(
        condition_occurrence_id=pl.int_range(1, pl.len() + 1) + offset * 10,
        condition_type_concept_id=pl.lit(TYPE_EHR),
    )
    db.load_arrow("condition_occurrence", conditions)
    rows = []
    for name, (concept_id, unit, _, _) in LABS.items():
        values = p[f"lab_{name}"]
        present = ~np.isnan(values)
        rows.append(
            pl.DataFrame(
                {
                    "person_id": p["person_id"][present],
                    "measurement_concept_id": np.full(int(present.sum()), concept_id),
                    "measurement_date": _date(index_days[present] - 5),
                    "value_as_number": values[present],
                    "unit_concept_id": np.full(int(present.sum()), unit),
                }
            )
        )
    rows.append(
        pl.DataFrame(
            {
                "person_id": p["person_id"],
                "measurement_concept_id": np.full(n, STAGE),
                "measurement_date": _date(index_days),
                "value_as_number": p["stage"].astype(float),
                "unit_concept_id": np.zeros(n, dtype=int),
            }
        )
    )
    measurement = pl.concat(rows).with_columns(
        measurement_id=pl.int_range(1, pl.len() + 1) + offset * 10,
        measurement_type_concept_id=pl.lit(TYPE_EHR),
    )
    db.load_arrow("measurement", measurement)
    treated = p["zoledronic"]
    db.load_arrow(
        "drug_exposure",
        pl.DataFrame(
            {
                "drug_exposure_id": p["person_id"][treated] + offset,
                "person_id": p["person_id"][treated],
                "drug_concept_id": np.full(int(treated.sum()), ZOLEDRONIC),
                "drug_exposure_start_date": _date(index_days[treated] - 60),
                "drug_exposure_end_date": _date(index_days[treated] - 59),
                "drug_type_concept_id": np.full(int(treated.sum()), TYPE_EHR),
            }
        ),
    )
    return p


def build_sites(
    folder: Path, profiles: tuple[SiteProfile, ...] = DEFAULT_SITES, *, seed: int = 7, scale: float = 1.0
) -> dict[str, Path]:
    """Write every profile as ``folder/<site>.duckdb`` (replacing old files); returns site -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for number, profile in enumerate(profiles):
        path = folder / f"{profile.name}.duckdb"
        path.unlink(missing_ok=True)
        sized = SiteProfile(**{**profile.__dict__, "persons": max(60, int(profile.persons * scale))})
        db = connect(path)
        build_site(db, sized, seed=seed, offset=number * 100_000)
        db.dispose()
        paths[profile.name] = path
    return paths


def approving_policies(
    sites: list[str], folder: Path, study_path: Path, *, requester: str = "unauthenticated", min_cohort: int = 20
) -> dict[str, str]:
    """One governance policy per site that approves the installed Flower app with ``study_path`` for
    ``requester``, with exactly the study's tables and concept sets: what a site's review board writes, for
    governed deployments in tests and benchmarks on 127.0.0.1. ``unauthenticated`` is the name a hub without
    the mTLS gate reports; never approve it at a real site. Returns site -> policy path."""
    import yaml

    from fedomop.federated.governance.approval import fab_hash, study_digest
    from fedomop.federated.runner import APP_DIR
    from fedomop.federated.study import parse_study

    study = parse_study(study_path.read_text(encoding="utf-8"), source=str(study_path))
    approval = {"app_sha256": fab_hash(APP_DIR), "study_digest": study_digest(study), "requester": requester}
    rules = {
        "approvals": [approval],
        "tables": study.tables(),
        "concept_sets": [{"vocabulary": c.vocabulary, "code": c.code} for c in study.all_concepts()],
        "min_cohort_size": min_cohort,
    }
    folder.mkdir(parents=True, exist_ok=True)
    policies = {}
    for site in sites:
        path = folder / f"{site}.policy.yaml"
        document = {"site": site, "audit_log": f"{site}.audit.jsonl", "studies": {study.name: rules}}
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        policies[site] = str(path)
    return policies
