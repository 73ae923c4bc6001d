"""The clinical model behind the sample sites: who the patients are and who develops bone metastasis.

Every feature is measured at or before the first cancer diagnosis; the outcome is a
bone-metastasis record within 365 days after it. The outcome depends on the features
through the non-linear model in :func:`outcome_logit` (thresholds, hinges and a
stage x cancer-type interaction), so a model has something real to learn while the
sites differ in case mix (non-IID). All sampling is vectorised with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CANCER_TYPES = ("breast", "prostate", "nsclc", "sclc", "colon")

# Outcome model coefficients (see docs/sample_data.md, "The outcome model").
INTERCEPT = -3.2
TYPE_EFFECT = {"breast": 0.0, "prostate": 0.35, "nsclc": 0.25, "sclc": 0.5, "colon": -0.7}
STAGE_SLOPE = {"breast": 0.55, "prostate": 0.75, "nsclc": 0.45, "sclc": 0.35, "colon": 0.35}
ALP_ULN = 130.0  # U/L
ALP_HIGH = 1.3
ALP_HIGH_LATE_STAGE = 0.7
CALCIUM_ULN = 10.2  # mg/dL
CALCIUM_SLOPE = 1.5
PSA_REF = 10.0  # ng/mL
PSA_SLOPE = 0.9
YOUNG_AGE = 50.0
YOUNG_SLOPE = 0.04
HB_LLN = 12.0  # g/dL
ANAEMIA_SLOPE = 0.35
BONE_PROTECTIVE = -1.0

STAGE_PROBABILITIES = {
    "breast": (0.35, 0.35, 0.20, 0.10),
    "prostate": (0.25, 0.35, 0.25, 0.15),
    "nsclc": (0.20, 0.15, 0.30, 0.35),
    "sclc": (0.05, 0.10, 0.30, 0.55),
    "colon": (0.20, 0.30, 0.30, 0.20),
}
AGE_MEAN_SD = {"breast": (60, 12), "prostate": (68, 8), "nsclc": (66, 9), "sclc": (65, 9), "colon": (64, 11)}
MALE_SHARE = {"breast": 0.01, "prostate": 1.0, "nsclc": 0.55, "sclc": 0.55, "colon": 0.5}


@dataclass
class Cohort:
    """Per-person features of one chunk (numpy arrays of equal length), in standard units."""

    cancer_type: np.ndarray  # str
    male: np.ndarray  # bool
    age: np.ndarray  # float years at diagnosis
    stage: np.ndarray  # int 1..4
    alp: np.ndarray  # U/L
    calcium: np.ndarray  # mg/dL
    psa: np.ndarray  # ng/mL, NaN unless prostate
    hemoglobin: np.ndarray  # g/dL
    creatinine: np.ndarray  # mg/dL
    bone_protective: np.ndarray  # bool: zoledronic acid or denosumab in the year before diagnosis

    def __len__(self) -> int:
        return len(self.stage)


def outcome_logit(
    cancer_type: np.ndarray,
    stage: np.ndarray,
    alp: np.ndarray,
    calcium: np.ndarray,
    psa: np.ndarray,
    age: np.ndarray,
    hemoglobin: np.ndarray,
    bone_protective: np.ndarray,
) -> np.ndarray:
    """The exact log-odds of bone metastasis within 12 months (documented in docs/sample_data.md).

    eta = INTERCEPT + TYPE_EFFECT[type] + STAGE_SLOPE[type] * (stage - 1)
          + ALP_HIGH * [alp > 130] + ALP_HIGH_LATE_STAGE * [alp > 130] * [stage >= 3]
          + CALCIUM_SLOPE * max(0, calcium - 10.2)
          + PSA_SLOPE * [prostate] * max(0, ln(psa / 10))
          + YOUNG_SLOPE * max(0, 50 - age) + ANAEMIA_SLOPE * max(0, 12 - hemoglobin)
          + BONE_PROTECTIVE * [bone-protective drug before diagnosis]
    """
    cancer_type = np.asarray(cancer_type)
    stage = np.asarray(stage, dtype=float)
    type_effect = np.vectorize(TYPE_EFFECT.__getitem__, otypes=[float])(cancer_type)
    slope = np.vectorize(STAGE_SLOPE.__getitem__, otypes=[float])(cancer_type)
    alp_high = (np.asarray(alp, dtype=float) > ALP_ULN).astype(float)
    prostate = cancer_type == "prostate"
    psa_term = np.where(prostate, np.maximum(0.0, np.log(np.where(prostate, psa, PSA_REF) / PSA_REF)), 0.0)
    return (
        INTERCEPT
        + type_effect
        + slope * (stage - 1)
        + ALP_HIGH * alp_high
        + ALP_HIGH_LATE_STAGE * alp_high * (stage >= 3)
        + CALCIUM_SLOPE * np.maximum(0.0, np.asarray(calcium, dtype=float) - CALCIUM_ULN)
        + PSA_SLOPE * psa_term
        + YOUNG_SLOPE * np.maximum(0.0, YOUNG_AGE - np.asarray(age, dtype=float))
        + ANAEMIA_SLOPE * np.maximum(0.0, HB_LLN - np.asarray(hemoglobin, dtype=float))
        + BONE_PROTECTIVE * np.asarray(bone_protective, dtype=float)
    )


def cohort_logit(cohort: Cohort) -> np.ndarray:
    """outcome_logit of every person of a cohort."""
    return outcome_logit(
        cohort.cancer_type,
        cohort.stage,
        cohort.alp,
        cohort.calcium,
        cohort.psa,
        cohort.age,
        cohort.hemoglobin,
        cohort.bone_protective,
    )


def outcome_probability(cohort: Cohort) -> np.ndarray:
    """sigmoid(outcome_logit) for a cohort."""
    return 1.0 / (1.0 + np.exp(-cohort_logit(cohort)))


def sample_cohort(rng: np.random.Generator, n: int, case_mix: dict[str, float]) -> Cohort:
    """Draw n patients of a site with the given case mix (features in standard units, full precision)."""
    shares = np.array([case_mix.get(t, 0.0) for t in CANCER_TYPES], dtype=float)
    cancer_type = np.array(CANCER_TYPES)[rng.choice(len(CANCER_TYPES), size=n, p=shares / shares.sum())]
    male = rng.random(n) < np.vectorize(MALE_SHARE.__getitem__, otypes=[float])(cancer_type)
    stage = np.empty(n, dtype=np.int64)
    age = np.empty(n)
    for kind in CANCER_TYPES:
        mask = cancer_type == kind
        count = int(mask.sum())
        stage[mask] = rng.choice(4, size=count, p=STAGE_PROBABILITIES[kind]) + 1
        mean, sd = AGE_MEAN_SD[kind]
        age[mask] = np.clip(rng.normal(mean, sd, size=count), 30, 92)
    late = stage - 1
    alp = np.exp(rng.normal(np.log(80.0) + 0.15 * late, 0.33))
    calcium = np.clip(rng.normal(9.4 + 0.12 * late, 0.45), 7.5, 13.5)
    psa_all = np.exp(rng.normal(np.log(7.0) + 0.55 * late, 0.9))
    psa = np.where(cancer_type == "prostate", psa_all, np.nan)
    hemoglobin = np.clip(rng.normal(np.where(male, 14.2, 13.0) - 0.35 * late, 1.1), 6.5, 18.5)
    creatinine = np.exp(rng.normal(np.log(np.where(male, 0.95, 0.8)), 0.18))
    bone_protective = rng.random(n) < (0.06 + 0.004 * np.maximum(0.0, age - 60) + 0.05 * ~male)
    return Cohort(cancer_type, male, age, stage, alp, calcium, psa, hemoglobin, creatinine, bone_protective)
