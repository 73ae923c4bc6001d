"""Generate the four sample sites, streaming chunk by chunk so any size runs in bounded memory.

Determinism: chunk ``k`` of site ``s`` draws from ``SeedSequence([seed, s, k])`` only, and
every id is derived from the seed, so the same ``(seed, persons, sites)`` always writes the
same bytes. Memory: only one chunk of persons (``CHUNK_SIZE``) is alive at a time.
"""

from __future__ import annotations

import csv
import random
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedomop.harmonize.ground.errors import MappingError, SourceError
from fedomop.harmonize.ground.resources import vocabulary_subset_dir
from fedomop.harmonize.synthetic import model
from fedomop.harmonize.synthetic.codebook import SITES, Codebook, site_configs, to_standard, to_written
from fedomop.harmonize.synthetic.fhir_writers import BundleWriter, NdjsonWriter
from fedomop.harmonize.synthetic.people import english_identity, french_identity
from fedomop.harmonize.synthetic.timeline import (
    FIRST_DIAGNOSIS,
    LAST_DIAGNOSIS,
    OUTCOME_WINDOW_DAYS,
    Features,
    History,
    Person,
    build_history,
)
from fedomop.harmonize.synthetic.vocabulary import build_vocabulary_subset
from fedomop.harmonize.synthetic.writers import CsvSiteWriter, Defect, SiteWriter, iso

DEFAULT_SEED = 20240611
DEFAULT_PERSONS = 5600
CHUNK_SIZE = 2000
LATE_METASTASIS_SHARE = 0.06
DEFECT_REASONS = ("implausible_value", "invalid_date", "unknown_person", "missing_value")
DEFECTS_PER_REASON = 2
RACES = (("White", 0.70), ("Black or African American", 0.15), ("Asian", 0.08), ("Unknown", 0.07))
TRUTH_PERSON_COLUMNS = (
    "person_source_value",
    "site",
    "cancer_type",
    "sex",
    "birth_date",
    "diagnosis_date",
    "age_at_diagnosis",
    "stage",
    "alp",
    "calcium",
    "psa",
    "hemoglobin",
    "creatinine",
    "bone_protective",
    "logit",
    "probability",
    "outcome",
    "outcome_date",
    "late_metastasis_date",
    "death_date",
)
WRITERS: dict[str, Callable[[str, Path, int], SiteWriter]] = {
    "csv": CsvSiteWriter,
    "fhir_ndjson": NdjsonWriter,
    "fhir_bundle": BundleWriter,
}


@dataclass(frozen=True)
class GenerationReport:
    """What was written: persons per site and the output folder."""

    out_dir: Path
    persons: dict[str, int]
    seed: int


def split_persons(total: int, sites: Sequence[str]) -> dict[str, int]:
    """Share ``total`` between the sites by their weight (largest remainder, deterministic)."""
    if total < len(sites):
        raise MappingError(f"--persons {total} is less than one person per site", fix=f"use at least {len(sites)}")
    weights = np.array([site_configs()[s]["weight"] for s in sites], dtype=float)
    exact = total * weights / weights.sum()
    counts = np.maximum(np.floor(exact).astype(int), 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    for i in order[: max(0, total - int(counts.sum()))]:
        counts[i] += 1
    return {s: int(c) for s, c in zip(sites, counts, strict=True)}


def copy_shipped_vocabulary(out_dir: Path) -> None:
    """Copy the vocabulary subset shipped with fedomop to ``out_dir`` (no-op when it is that very folder).

    The subset is built once from the Eunomia shard (``--eunomia``) and shipped as package data, so a
    site installed from the wheel regenerates the sample sites without any reference material.
    """
    source = vocabulary_subset_dir()
    if not source.is_dir():
        raise SourceError(
            "the vocabulary subset is not part of this install",
            where=str(source),
            fix="reinstall fedomop, or build the subset with --eunomia shared/omop/eunomia-synthea27nj",
        )
    if out_dir.exists() and out_dir.resolve() == source.resolve():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for file in sorted(source.iterdir()):
        if file.is_file():
            shutil.copyfile(file, out_dir / file.name)


def generate_sample_data(
    out_dir: Path | str,
    *,
    seed: int = DEFAULT_SEED,
    persons: int = DEFAULT_PERSONS,
    sites: Sequence[str] = SITES,
    eunomia_dir: Path | str | None = None,
    vocabulary: bool = True,
    workers: int = 1,
) -> GenerationReport:
    """Write the sites (and the vocabulary subset) to ``out_dir``; the same arguments give the same bytes.

    ``workers`` > 1 generates sites in parallel processes; the output is identical either way.
    """
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        raise MappingError(f"unknown sample site {unknown[0]!r}", fix=f"choose from {', '.join(SITES)}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SourceError(
            f"cannot create the output folder: {error}", where=str(out), fix="choose a writable --out"
        ) from error
    if vocabulary:
        if eunomia_dir is not None:
            build_vocabulary_subset(Path(eunomia_dir), out / "vocabulary")
        else:
            copy_shipped_vocabulary(out / "vocabulary")
    counts = split_persons(persons, list(sites))
    for site in sites:
        if (out / site).exists():
            shutil.rmtree(out / site)
    if workers > 1 and len(sites) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(sites))) as pool:
            futures = [pool.submit(generate_site, site, out, seed=seed, persons=counts[site]) for site in sites]
            for future in futures:
                future.result()
    else:
        for site in sites:
            generate_site(site, out, seed=seed, persons=counts[site])
    return GenerationReport(out, counts, seed)


def generate_site(site: str, out: Path, *, seed: int, persons: int) -> None:
    """Stream one site: chunks of persons rendered in the site's dialect with ground truth."""
    config = site_configs()[site]
    try:
        writer = WRITERS[config["format"]](site, out, seed)
    except OSError as error:
        raise SourceError(
            f"cannot write the sample site: {error}", where=str(out / site), fix="choose a writable --out"
        ) from error
    site_number = SITES.index(site)
    try:
        with (out / site / "truth_persons.csv").open("w", encoding="utf-8", newline="") as handle:
            persons_out = csv.writer(handle, lineterminator="\n")
            persons_out.writerow(TRUTH_PERSON_COLUMNS)
            for chunk, start in enumerate(range(0, persons, CHUNK_SIZE)):
                size = min(CHUNK_SIZE, persons - start)
                _generate_chunk(writer, persons_out, seed, site_number, chunk, start, size)
    except OSError as error:
        raise SourceError(
            f"cannot write the sample site: {error}", where=str(out / site), fix="check free disk space and permissions"
        ) from error
    finally:
        writer.close()


class RowWriter(Protocol):
    """What the generator needs of a ``csv.writer``: one row at a time."""

    def writerow(self, row: Iterable[Any], /) -> Any: ...


def _recorded(value: float, item: str, book: Codebook) -> float:
    """A feature as a correct ETL will store it: written in the site's unit and rounding, converted back."""
    lab = book.lab(item)
    return to_standard(to_written(value, lab), lab)


def _generate_chunk(
    writer: SiteWriter, persons_out: RowWriter, seed: int, site_number: int, chunk: int, start: int, size: int
) -> None:
    sequence = np.random.SeedSequence([seed, site_number, chunk])
    rng = np.random.default_rng(sequence)
    rnd = random.Random(int(sequence.generate_state(1)[0]))
    book = writer.book
    cohort = model.sample_cohort(rng, size, book.config["case_mix"])
    diagnosis = rng.integers(FIRST_DIAGNOSIS, LAST_DIAGNOSIS + 1, size=size)
    birth = diagnosis - np.round(cohort.age * 365.25).astype(np.int64) - rng.integers(0, 200, size=size)
    cohort.age = (diagnosis - birth) / 365.25
    recorded = {
        item: np.array([_recorded(v, item, book) for v in getattr(cohort, item)])
        for item in ("alp", "calcium", "hemoglobin", "creatinine")
    }
    cohort.alp, cohort.calcium = recorded["alp"], recorded["calcium"]
    cohort.hemoglobin, cohort.creatinine = recorded["hemoglobin"], recorded["creatinine"]
    cohort.psa = np.array([np.nan if np.isnan(v) else _recorded(v, "psa", book) for v in cohort.psa])
    eta = model.cohort_logit(cohort)
    probability = 1.0 / (1.0 + np.exp(-eta))
    outcome = rng.random(size) < probability
    outcome_day = diagnosis + rng.integers(30, OUTCOME_WINDOW_DAYS + 1, size=size)
    late = ~outcome & (rng.random(size) < LATE_METASTASIS_SHARE)
    late_day = diagnosis + rng.integers(OUTCOME_WINDOW_DAYS + 30, 720, size=size)
    dies = rng.random(size) < 1.0 / (1.0 + np.exp(-(-2.8 + 0.55 * (cohort.stage - 1) + 1.0 * outcome)))
    death_day = np.maximum(diagnosis + rng.integers(60, 900, size=size), np.where(outcome, outcome_day + 30, 0))
    creatinine_missing = rng.random(size) < 0.05
    identity = french_identity if writer.site == "site_c" else english_identity
    plan = _defect_plan(book, size) if chunk == 0 else {}
    for i in range(size):
        person = Person(
            index=start + i,
            male=bool(cohort.male[i]),
            birth=int(birth[i]),
            diagnosis=int(diagnosis[i]),
            cancer_type=str(cohort.cancer_type[i]),
            stage=int(cohort.stage[i]),
            death=int(death_day[i]) if dies[i] else None,
            outcome_date=int(outcome_day[i]) if outcome[i] else None,
        )
        if late[i] and (person.death is None or late_day[i] < person.death):
            person.late_metastasis_date = int(late_day[i])
        person.first_name, person.last_name, person.street, person.city, person.postcode = identity(rnd, person.male)
        person.race = rnd.choices([r for r, _ in RACES], [w for _, w in RACES])[0]
        person.ethnicity = "Hispanic or Latino" if rnd.random() < 0.12 else "Not Hispanic or Latino"
        psa = None if np.isnan(cohort.psa[i]) else float(cohort.psa[i])
        features = Features(
            alp=float(cohort.alp[i]),
            calcium=float(cohort.calcium[i]),
            psa=psa,
            hemoglobin=float(cohort.hemoglobin[i]),
            creatinine=None if creatinine_missing[i] else float(cohort.creatinine[i]),
            bone_protective=bool(cohort.bone_protective[i]),
            outcome=bool(outcome[i]),
            late_metastasis=person.late_metastasis_date is not None,
            dies=person.death is not None,
        )
        writer.write_history(build_history(person, features, rnd), rnd)
        for action in plan.get(i, []):
            action(writer, History(person))
        persons_out.writerow(_truth_person(writer, person, features, float(eta[i]), float(probability[i])))


def _unmapped_action(kind: str, code: str) -> Callable[[SiteWriter, History], None]:
    def act(writer: SiteWriter, history: History) -> None:
        writer.write_unmapped(history, kind, code)

    return act


def _defect_action(reason: str) -> Callable[[SiteWriter, History], None]:
    def act(writer: SiteWriter, history: History) -> None:
        writer.write_defect(history, Defect(reason))

    return act


def _defect_plan(book: Codebook, size: int) -> dict[int, list[Callable[[SiteWriter, History], None]]]:
    """Which persons of the first chunk get an extra unmapped or bad record (spread over the chunk)."""
    actions: list[Callable[[SiteWriter, History], None]] = []
    for kind in ("condition", "lab", "drug", "procedure"):
        for code in book.unmapped(kind):
            actions.append(_unmapped_action(kind, code))
    for reason in DEFECT_REASONS:
        for _ in range(DEFECTS_PER_REASON):
            actions.append(_defect_action(reason))
    plan: dict[int, list[Callable[[SiteWriter, History], None]]] = {}
    for n, action in enumerate(actions):
        plan.setdefault((3 + 7 * n) % size, []).append(action)
    return plan


def _number(value: float | None, decimals: int = 6) -> str:
    if value is None:
        return ""
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def _truth_person(writer: SiteWriter, person: Person, features: Features, eta: float, probability: float) -> tuple:
    """One row of truth_persons.csv: the features (standard units) and the outcome of a person."""
    window_end = person.diagnosis + OUTCOME_WINDOW_DAYS
    outcome = person.outcome_date is not None and person.outcome_date <= window_end
    return (
        writer.person_source_value(person.index),
        writer.site,
        person.cancer_type,
        "M" if person.male else "F",
        iso(person.birth),
        iso(person.diagnosis),
        _number((person.diagnosis - person.birth) / 365.25, 4),
        person.stage,
        _number(features.alp),
        _number(features.calcium),
        _number(features.psa),
        _number(features.hemoglobin),
        _number(features.creatinine),
        int(features.bone_protective),
        _number(eta),
        _number(probability),
        int(outcome),
        iso(person.outcome_date) if person.outcome_date is not None else "",
        iso(person.late_metastasis_date) if person.late_metastasis_date is not None else "",
        iso(person.death) if person.death is not None else "",
    )
