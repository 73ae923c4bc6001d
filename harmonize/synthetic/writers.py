"""Render site-neutral histories in each site's dialect, streaming, with a ground-truth row per source record.

Three writers: CSV extracts (sites A and C, dialect from sites.yaml), FHIR R4 bulk NDJSON
(site B) and FHIR R4 transaction Bundles, one JSON file per patient (site D). Every record a
writer emits goes through :meth:`SiteWriter.truth`, so the answer file always matches the
source files row for row.
"""

from __future__ import annotations

import csv
import random
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO, TYPE_CHECKING

from fedomop.harmonize.synthetic.codebook import Codebook, Coded, LabCoding, format_number, to_standard, to_written
from fedomop.harmonize.synthetic.timeline import History

if TYPE_CHECKING:
    from _csv import Writer  # what csv.writer returns (the csv module names no public type for it)

TRUTH_COLUMNS = (
    "source_file",
    "source_row",
    "person_source_value",
    "expected_table",
    "concept_id",
    "source_concept_id",
    "value_as_number",
    "unit_concept_id",
    "event_date",
    "reason",
)
TABLE_OF_KIND = {
    "condition": "condition_occurrence",
    "lab": "measurement",
    "drug": "drug_exposure",
    "procedure": "procedure_occurrence",
}
QUARANTINE = "quarantine"
UNMAPPED = "unmapped_code"


_ISO: dict[int, str] = {}


def iso(day: int) -> str:
    """ISO date of a day ordinal (cached: a run only ever uses a few thousand days)."""
    text = _ISO.get(day)
    if text is None:
        text = _ISO[day] = date.fromordinal(day).isoformat()
    return text


class TruthWriter:
    """``ground_truth.csv``: one row per OMOP row a source record must produce (or one quarantine row).

    Written by hand rather than with ``csv.writer``: no field can hold a comma or quote (file
    names, ids, numbers, ISO dates, reason words), and this file is the largest one written.
    """

    def __init__(self, path: Path) -> None:
        self.handle = path.open("w", encoding="utf-8", newline="")
        self.handle.write(",".join(TRUTH_COLUMNS) + "\n")

    def row(
        self,
        source_file: str,
        source_row: str,
        person: str,
        table: str,
        concept_id: int = 0,
        source_concept_id: int = 0,
        value: float | None = None,
        unit_concept_id: int | None = None,
        event_date: str = "",
        reason: str = "",
    ) -> None:
        number = "" if value is None else format_number(value, 6).rstrip("0").rstrip(".")
        unit = "" if unit_concept_id is None else str(unit_concept_id)
        self.handle.write(
            f"{source_file},{source_row},{person},{table},{concept_id},{source_concept_id},{number},{unit},"
            f"{event_date},{reason}\n"
        )

    def close(self) -> None:
        self.handle.close()


@dataclass
class Defect:
    """A deliberately bad record: what is wrong with it and the quarantine reason expected."""

    reason: str  # implausible_value | invalid_date | unknown_person | missing_value


class SiteWriter:
    """Shared bookkeeping: the site folder, its codebook, the truth file and stable ids."""

    def __init__(self, site: str, out_dir: Path, seed: int) -> None:
        self.site = site
        self.book = Codebook(site)
        self.out_dir = out_dir / site
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.truth = TruthWriter(self.out_dir / "ground_truth.csv")
        self.namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"https://fedomop.example/{site}/{seed}")

    def stable_uuid(self, *parts: object) -> str:
        """A uuid that depends only on the seed, the site and the parts (reproducible across runs)."""
        return str(uuid.uuid5(self.namespace, "/".join(str(p) for p in parts)))

    def person_source_value(self, index: int) -> str:
        """The patient identifier the site uses."""
        return {"site_a": "A{:07d}", "site_b": "PB{:07d}", "site_c": "{:010d}", "site_d": "LD-{:06d}"}[
            self.site
        ].format(index + 1)

    def lab_truth(self, lab: LabCoding, written: float) -> tuple[float, int]:
        """(value in the standard unit, its unit concept) a correct ETL stores for a written lab value."""
        return to_standard(written, lab), lab.standard_unit_concept

    def write_history(self, history: History, rnd: random.Random) -> None:
        """Write one person's records in the site's format (each site format overrides this)."""
        raise NotImplementedError

    def write_unmapped(self, history: History, kind: str, code: str) -> None:
        """Write one record with a code the site's vocabulary does not map (the quarantine must catch it)."""
        raise NotImplementedError

    def write_defect(self, history: History, defect: Defect) -> None:
        """Write one deliberately broken record (the quarantine must catch it with its reason)."""
        raise NotImplementedError

    def close(self) -> None:
        self.truth.close()


class CsvSiteWriter(SiteWriter):
    """Sites A and C: one CSV per kind of record, column names, dates, encoding and units per sites.yaml."""

    FILES = {
        "site_a": {
            "patients": ("patients.csv", ("patient_id", "first_name", "last_name", "sex", "birth_date", "race",
                                          "ethnicity", "address", "city", "zip", "death_date")),
            "visits": ("encounters.csv", ("encounter_id", "patient_id", "encounter_type", "start_date", "end_date")),
            "condition": ("conditions.csv", ("patient_id", "encounter_id", "icd10_code", "description", "onset_date")),
            "lab": ("observations.csv", ("patient_id", "encounter_id", "loinc_code", "description", "value", "unit",
                                         "observed_on")),
            "drug": ("medications.csv", ("patient_id", "encounter_id", "rxnorm_code", "description", "start_date",
                                         "end_date")),
            "procedure": ("procedures.csv", ("patient_id", "encounter_id", "snomed_code", "description",
                                             "performed_on")),
        },
        "site_c": {
            "patients": ("patients.csv", ("NUM_PATIENT", "NOM", "PRENOM", "SEXE", "DATE_NAISSANCE", "ADRESSE",
                                          "CODE_POSTAL", "VILLE", "DATE_DECES")),
            "visits": ("sejours.csv", ("NUM_SEJOUR", "NUM_PATIENT", "TYPE_SEJOUR", "DATE_ENTREE", "DATE_SORTIE")),
            "condition": ("diagnostics.csv", ("NUM_PATIENT", "NUM_SEJOUR", "CODE_CIM9", "LIBELLE", "DATE_DIAGNOSTIC")),
            "lab": ("biologie.csv", ("NUM_PATIENT", "NUM_SEJOUR", "CODE_ANALYSE", "LIBELLE", "RESULTAT", "UNITE",
                                     "DATE_PRELEVEMENT")),
            "drug": ("traitements.csv", ("NUM_PATIENT", "NUM_SEJOUR", "CODE_MEDICAMENT", "LIBELLE", "DATE_DEBUT",
                                         "DATE_FIN")),
            "procedure": ("actes.csv", ("NUM_PATIENT", "NUM_SEJOUR", "CODE_ACTE", "LIBELLE", "DATE_ACTE")),
        },
    }  # fmt: skip

    def __init__(self, site: str, out_dir: Path, seed: int) -> None:
        super().__init__(site, out_dir, seed)
        config = self.book.config
        self.date_format = config["date_format"]
        self.handles: dict[str, IO[str]] = {}
        self.writers: dict[str, Writer] = {}
        self.rows: dict[str, int] = {}
        self.names: dict[str, str] = {}
        for kind, (name, header) in self.FILES[site].items():
            handle = (self.out_dir / name).open("w", encoding=config["encoding"], newline="")
            writer = csv.writer(handle, delimiter=config["delimiter"], lineterminator="\n")
            writer.writerow(header)
            self.handles[kind], self.writers[kind], self.rows[kind], self.names[kind] = handle, writer, 0, name
        self._dates: dict[int, str] = {}

    def day(self, ordinal: int) -> str:
        """A date in the site's format (cached: the same few thousand days recur)."""
        text = self._dates.get(ordinal)
        if text is None:
            text = date.fromordinal(ordinal).strftime(self.date_format)
            self._dates[ordinal] = text
        return text

    def emit(self, kind: str, row: tuple) -> tuple[str, str]:
        """Write one data row; returns (file name, 1-based data row number) for the ground truth."""
        self.writers[kind].writerow(row)
        self.rows[kind] += 1
        return self.names[kind], str(self.rows[kind])

    def visit_id(self, psv: str, key: int) -> str:
        return f"{psv}-V{key + 1:02d}" if self.site == "site_a" else f"S{psv[-7:]}{key + 1:02d}"

    def write_history(self, history: History, rnd: random.Random) -> None:
        """All records of one person."""
        person = history.person
        psv = self.person_source_value(person.index)
        book = self.book
        sex = book.config["sex_codes"]["M" if person.male else "F"]
        death = self.day(person.death) if person.death is not None else ""
        if self.site == "site_a":
            row: tuple = (psv, person.first_name, person.last_name, sex, self.day(person.birth), person.race,
                          person.ethnicity, person.street, person.city, person.postcode, death)  # fmt: skip
        else:
            row = (psv, person.last_name.upper(), person.first_name, sex, self.day(person.birth), person.street,
                   person.postcode, person.city, death)  # fmt: skip
        source = self.emit("patients", row)
        self.truth.row(*source, psv, "person", book.gender_concept(person.male), 0, event_date=iso(person.birth))
        if person.death is not None:
            self.truth.row(*source, psv, "death", 0, 0, event_date=iso(person.death))
        codes = book.config["visit_codes"]
        for key, (kind, start, end) in enumerate(history.visits):
            source = self.emit("visits", (self.visit_id(psv, key), psv, codes[kind], self.day(start), self.day(end)))
            self.truth.row(*source, psv, "visit_occurrence", book.visit_concept(kind), 0, event_date=iso(start))
        for item, day, key in history.conditions:
            self.write_condition(psv, book.condition(item, rnd), day, key)
        for item, day, value, key in history.labs:
            self.write_lab(psv, item, day, value, key)
        for item, start, end, key in history.drugs:
            coded = book.drug(item)
            source = self.emit(
                "drug", (psv, self.visit_id(psv, key), coded.code, coded.label, self.day(start), self.day(end))
            )
            self.truth.row(*source, psv, "drug_exposure", coded.concept_id, coded.source_concept_id,
                           event_date=iso(start))  # fmt: skip
        for item, day, key in history.procedures:
            coded = book.procedure(item)
            source = self.emit("procedure", (psv, self.visit_id(psv, key), coded.code, coded.label, self.day(day)))
            self.truth.row(*source, psv, "procedure_occurrence", coded.concept_id, coded.source_concept_id,
                           event_date=iso(day))  # fmt: skip

    def write_condition(self, psv: str, coded: Coded, day: int, key: int) -> None:
        source = self.emit("condition", (psv, self.visit_id(psv, key), coded.code, coded.label, self.day(day)))
        self.truth.row(*source, psv, "condition_occurrence", coded.concept_id, coded.source_concept_id,
                       event_date=iso(day))  # fmt: skip

    def write_lab(self, psv: str, item: str, day: int, value: float, key: int) -> None:
        lab = self.book.lab(item)
        written = to_written(value, lab)
        row = (psv, self.visit_id(psv, key), lab.coded.code, lab.coded.label, format_number(written, lab.decimals),
               lab.unit, self.day(day))  # fmt: skip
        source = self.emit("lab", row)
        standard, unit = self.lab_truth(lab, written)
        self.truth.row(*source, psv, "measurement", lab.coded.concept_id, lab.coded.source_concept_id, standard,
                       unit, iso(day))  # fmt: skip

    def write_unmapped(self, history: History, kind: str, code: str) -> None:
        """A record whose code neither the vocabulary nor the site map knows: kept with concept_id 0."""
        psv = self.person_source_value(history.person.index)
        day, key = history.person.diagnosis, 1
        visit = self.visit_id(psv, key)
        if kind == "lab":
            unit = "µg/L" if self.site == "site_c" else "ng/mL"
            source = self.emit("lab", (psv, visit, code, "25-OH vitamin D", "31.5", unit, self.day(day)))
            self.truth.row(*source, psv, "measurement", 0, 0, 31.5, 8748 if unit == "µg/L" else 8842, iso(day),
                           UNMAPPED)  # fmt: skip
        elif kind == "drug":
            source = self.emit("drug", (psv, visit, code, "not in the vocabulary", self.day(day), self.day(day + 10)))
            self.truth.row(*source, psv, "drug_exposure", 0, 0, event_date=iso(day), reason=UNMAPPED)
        else:
            source = self.emit(kind, (psv, visit, code, "not in the vocabulary", self.day(day)))
            self.truth.row(*source, psv, TABLE_OF_KIND[kind], 0, 0, event_date=iso(day), reason=UNMAPPED)

    def write_defect(self, history: History, defect: Defect) -> None:
        """One deliberately bad lab row that a correct ETL must quarantine."""
        psv = self.person_source_value(history.person.index)
        lab = self.book.lab("alp")
        day = history.person.diagnosis - 2
        values = {"implausible_value": "-45", "missing_value": ""}
        date_text = self.day(day)
        patient = psv
        if defect.reason == "invalid_date":
            date_text = "2019-02-30" if self.site == "site_a" else "31/13/2019"
        if defect.reason == "unknown_person":
            patient = self.person_source_value(9_999_990 + history.person.index % 9)
        row = (patient, self.visit_id(psv, 1), lab.coded.code, lab.coded.label, values.get(defect.reason, "97"),
               lab.unit, date_text)  # fmt: skip
        source = self.emit("lab", row)
        self.truth.row(*source, patient, QUARANTINE, event_date="", reason=defect.reason)

    def write_site_map(self) -> None:
        """The site's own source_to_concept_map.csv (OMOP STCM columns, UTF-8, comma-separated)."""
        rows = self.book.site_map_rows()
        with (self.out_dir / "source_to_concept_map.csv").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        self.write_site_map()
        for handle in self.handles.values():
            handle.close()
        super().close()
