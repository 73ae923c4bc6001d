"""Turn one patient's features into a dated, site-neutral clinical history.

A history is a handful of tuples (visits, conditions, labs, drugs, procedures) with
dates as day ordinals and lab values in standard units; the site writers render it
in their dialect. Features are measured before or at diagnosis; treatment, follow-up
labs and the outcome come after it (follow-up labs and post-outcome bone drugs are
deliberate leakage traps for a careless feature extractor).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date

FIRST_DIAGNOSIS = date(2016, 1, 1).toordinal()
LAST_DIAGNOSIS = date(2022, 12, 31).toordinal()
OUTCOME_WINDOW_DAYS = 365
FOLLOW_UP_DAYS = 420


@dataclass
class Person:
    """Demographics and the facts the ground truth needs."""

    index: int
    male: bool
    birth: int
    diagnosis: int
    cancer_type: str
    stage: int
    death: int | None = None
    race: str = "Unknown"
    ethnicity: str = "Not Hispanic or Latino"
    first_name: str = ""
    last_name: str = ""
    street: str = ""
    city: str = ""
    postcode: str = ""
    outcome_date: int | None = None
    late_metastasis_date: int | None = None


@dataclass
class History:
    """Everything recorded about one person. Visit keys index into ``visits``."""

    person: Person
    visits: list[tuple[str, int, int]] = field(default_factory=list)  # (kind OP/IP/ER, start, end)
    conditions: list[tuple[str, int, int]] = field(default_factory=list)  # (item, date, visit)
    labs: list[tuple[str, int, float, int]] = field(default_factory=list)  # (lab, date, value, visit)
    drugs: list[tuple[str, int, int, int]] = field(default_factory=list)  # (drug, start, end, visit)
    procedures: list[tuple[str, int, int]] = field(default_factory=list)  # (procedure, date, visit)

    def visit(self, kind: str, start: int, length: int = 0) -> int:
        """Add a visit and return its key."""
        self.visits.append((kind, start, start + length))
        return len(self.visits) - 1


@dataclass(frozen=True)
class Features:
    """One person's recorded features (standard units) and outcome draw."""

    alp: float
    calcium: float
    psa: float | None
    hemoglobin: float
    creatinine: float | None
    bone_protective: bool
    outcome: bool
    late_metastasis: bool
    dies: bool


def _endocrine_drug(person: Person, rnd: random.Random) -> str:
    if person.cancer_type == "breast":
        if person.diagnosis - person.birth < 55 * 365:
            return "tamoxifen"
        return rnd.choice(("anastrozole", "letrozole"))
    return "leuprolide"


def _add_treatment(history: History, rnd: random.Random, stop: int) -> None:
    """Surgery, systemic therapy and radiotherapy after diagnosis, as usual for the cancer type and stage."""
    person = history.person
    kind, stage, dx = person.cancer_type, person.stage, person.diagnosis
    if kind == "breast" and stage <= 3:
        day = dx + rnd.randint(14, 60)
        if day < stop:
            visit = history.visit("IP", day, rnd.randint(1, 4))
            history.procedures.append(("lumpectomy" if stage <= 2 else "breast_excision", day, visit))
    if kind == "prostate" and stage <= 2 and rnd.random() < 0.6:
        day = dx + rnd.randint(30, 90)
        if day < stop:
            visit = history.visit("IP", day, rnd.randint(2, 5))
            history.procedures.append(("prostatectomy", day, visit))
    start = dx + rnd.randint(7, 45)
    if start >= stop:
        return
    visit = history.visit("OP", start)
    drugs: list[str] = []
    if kind == "breast":
        if rnd.random() < 0.85:
            drugs.append(_endocrine_drug(person, rnd))
        if stage >= 2 and rnd.random() < 0.5:
            drugs += [rnd.choice(("docetaxel", "paclitaxel")), "cyclophosphamide"]
            if rnd.random() < 0.5:
                drugs.append("doxorubicin")
    elif kind == "prostate":
        if stage >= 3 or rnd.random() < 0.4:
            drugs.append("leuprolide")
        if stage == 4 and rnd.random() < 0.5:
            drugs.append("docetaxel")
    elif kind == "nsclc":
        drugs += [rnd.choice(("carboplatin", "cisplatin")), rnd.choice(("paclitaxel", "docetaxel"))]
    elif kind == "sclc":
        drugs += [rnd.choice(("carboplatin", "cisplatin")), "etoposide"]
    for drug in drugs:
        length = 180 if drug in ("tamoxifen", "anastrozole", "letrozole", "leuprolide") else 90
        history.drugs.append((drug, start, min(start + length, stop), visit))
    if kind in ("nsclc", "sclc", "colon") or any(d in drugs for d in ("docetaxel", "paclitaxel")):
        history.procedures.append(("chemotherapy", start, visit))
    radio = (kind == "breast" and stage <= 2) or (kind == "nsclc" and stage == 3) or rnd.random() < 0.15
    if radio:
        day = start + rnd.randint(20, 60)
        if day < stop:
            history.procedures.append(("radiotherapy", day, history.visit("OP", day)))


def build_history(person: Person, features: Features, rnd: random.Random) -> History:
    """Dated visits and records for one person, consistent with the features and outcome."""
    history = History(person)
    dx = person.diagnosis
    stop = person.death + 1 if person.death is not None else dx + FOLLOW_UP_DAYS
    if features.bone_protective:
        day = dx - rnd.randint(30, 330)
        visit = history.visit("OP", day)
        history.drugs.append((rnd.choice(("zoledronic_acid", "denosumab")), day, day, visit))
        if rnd.random() < 0.5:
            history.procedures.append(("bone_density_scan", day, visit))
    workup = dx - rnd.randint(1, 30)
    visit = history.visit("OP", workup)
    history.labs += [
        ("alp", workup, features.alp, visit),
        ("calcium", workup, features.calcium, visit),
        ("hemoglobin", workup, features.hemoglobin, visit),
    ]
    if features.creatinine is not None:
        history.labs.append(("creatinine", workup, features.creatinine, visit))
    if features.psa is not None:
        history.labs.append(("psa", workup, features.psa, visit))
    visit = history.visit("OP", dx)
    history.conditions.append((person.cancer_type, dx, visit))
    history.labs.append(("stage", dx, float(person.stage), visit))
    biopsy = {"breast": "breast_biopsy", "prostate": "prostate_biopsy", "nsclc": "lung_biopsy", "sclc": "lung_biopsy"}
    if person.cancer_type in biopsy:
        history.procedures.append((biopsy[person.cancer_type], dx, visit))
    _add_treatment(history, rnd, stop)
    _add_follow_up(history, features, rnd, stop)
    _add_metastasis(history, rnd)
    return history


def _add_follow_up(history: History, features: Features, rnd: random.Random, stop: int) -> None:
    """Quarterly visits with ALP and calcium; after a bone metastasis they rise (a leakage trap)."""
    person = history.person
    day = person.diagnosis + rnd.randint(90, 130)
    while day < stop and day <= person.diagnosis + FOLLOW_UP_DAYS:
        visit = history.visit("OP", day)
        spread = person.outcome_date is not None and day >= person.outcome_date
        alp = features.alp * (1.8 if spread else 1.0) * rnd.uniform(0.85, 1.15)
        calcium = features.calcium + (0.8 if spread else 0.0) + rnd.uniform(-0.3, 0.3)
        history.labs += [("alp", day, alp, visit), ("calcium", day, calcium, visit)]
        day += rnd.randint(100, 140)


def _add_metastasis(history: History, rnd: random.Random) -> None:
    """The outcome record (and bone-targeted treatment after it), or a metastasis found too late to count."""
    person = history.person
    for day in (person.outcome_date, person.late_metastasis_date):
        if day is None:
            continue
        visit = history.visit("ER" if rnd.random() < 0.3 else "OP", day)
        history.conditions.append(("bone_metastasis", day, visit))
        if day == person.outcome_date:
            treat = day + rnd.randint(3, 30)
            history.drugs.append((rnd.choice(("zoledronic_acid", "denosumab")), treat, treat, visit))
