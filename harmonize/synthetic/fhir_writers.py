"""FHIR R4 renderings of the site histories: bulk NDJSON (site B) and transaction Bundles (site D).

Resources are compact JSON (no narrative, no indentation) with every element R4 requires.
Site B references resources as ``Patient/<id>``; site D puts one patient per transaction
Bundle and references entries by ``urn:uuid`` fullUrls. Both give every resource a logical
id, which is the ``source_row`` of the ground truth.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import IO, Any

from fedomop.harmonize.synthetic.codebook import Coded, format_number, to_written
from fedomop.harmonize.synthetic.timeline import History
from fedomop.harmonize.synthetic.writers import QUARANTINE, TABLE_OF_KIND, UNMAPPED, Defect, SiteWriter, iso

SYSTEMS = {
    "SNOMED": "http://snomed.info/sct",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "LOINC": "http://loinc.org",
    "RxNorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
}
UCUM = "http://unitsofmeasure.org"
ENCOUNTER_CLASS = {"OP": "AMB", "IP": "IMP", "ER": "EMER"}
BONE_STRUCTURE = {"system": SYSTEMS["SNOMED"], "code": "272673000", "display": "Bone structure"}
RESOURCE_TYPES = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure")


def _concept(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": SYSTEMS[system], "code": code, "display": display}]}


def _dumps(resource: dict) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))


class FhirSiteWriter(SiteWriter):
    """Builds the resources of one person; subclasses decide how they are stored and referenced."""

    def __init__(self, site: str, out_dir: Path, seed: int) -> None:
        super().__init__(site, out_dir, seed)
        self.config = self.book.config

    # -- references and storage, overridden per format ------------------------------------------
    def ref(self, resource_type: str, resource_id: str) -> dict:
        return {"reference": f"{resource_type}/{resource_id}"}

    def store(self, resource: dict) -> tuple[str, str]:
        raise NotImplementedError

    def finish_person(self, psv: str) -> None:
        """Called once all resources of a person are stored."""

    # -- resources --------------------------------------------------------------------------------
    def patient_id(self, index: int) -> str:
        return self.person_source_value(index)

    def patient(self, history: History) -> dict:
        person = history.person
        psv = self.person_source_value(person.index)
        resource: dict = {
            "resourceType": "Patient",
            "id": self.patient_id(person.index),
            "identifier": [{"system": f"urn:fedomop:{self.site}:mrn", "value": psv}],
            "name": [{"family": person.last_name, "given": [person.first_name]}],
            "gender": "male" if person.male else "female",
            "birthDate": iso(person.birth),
            "address": [{"line": [person.street], "city": person.city, "postalCode": person.postcode}],
        }
        if person.death is not None:
            resource["deceasedDateTime"] = iso(person.death)
        return resource

    def write_history(self, history: History, rnd: random.Random) -> None:
        """Every resource of one person, with its ground truth rows."""
        person = history.person
        psv = self.person_source_value(person.index)
        pid = self.patient_id(person.index)
        subject = self.ref("Patient", pid)
        source = self.store(self.patient(history))
        self.truth.row(*source, psv, "person", self.book.gender_concept(person.male), 0, event_date=iso(person.birth))
        if person.death is not None:
            self.truth.row(*source, psv, "death", 0, 0, event_date=iso(person.death))
        encounters = []
        for key, (kind, start, end) in enumerate(history.visits):
            code = ENCOUNTER_CLASS[kind]
            eid = self.stable_uuid("Encounter", person.index, key)
            encounters.append(self.ref("Encounter", eid))
            resource = {
                "resourceType": "Encounter",
                "id": eid,
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code},
                "subject": subject,
                "period": {"start": iso(start), "end": iso(end)},
            }
            source = self.store(resource)
            self.truth.row(*source, psv, "visit_occurrence", self.book.visit_concept(kind), 0, event_date=iso(start))
        for n, (item, day, key) in enumerate(history.conditions):
            coded = self.book.condition(self.condition_item(item, history, rnd), rnd)
            resource = self.condition(coded, item, subject, encounters[key], day, ("Condition", person.index, n))
            source = self.store(resource)
            self.truth.row(*source, psv, "condition_occurrence", coded.concept_id, coded.source_concept_id,
                           event_date=iso(day))  # fmt: skip
        for n, (item, day, value, key) in enumerate(history.labs):
            lab = self.book.lab(item)
            written = to_written(value, lab)
            oid = self.stable_uuid("Observation", person.index, n)
            resource = self.observation(oid, lab.coded, subject, encounters[key], iso(day), written, lab.unit,
                                        lab.decimals)  # fmt: skip
            source = self.store(resource)
            standard, unit = self.lab_truth(lab, written)
            self.truth.row(*source, psv, "measurement", lab.coded.concept_id, lab.coded.source_concept_id, standard,
                           unit, iso(day))  # fmt: skip
        for n, (item, start, end, key) in enumerate(history.drugs):
            coded = self.book.drug(item)
            resource = {
                "resourceType": "MedicationRequest",
                "id": self.stable_uuid("MedicationRequest", person.index, n),
                "status": "completed",
                "intent": "order",
                "medicationCodeableConcept": _concept("RxNorm", coded.code, coded.label),
                "subject": subject,
                "encounter": encounters[key],
                "authoredOn": iso(start),
                "dispenseRequest": {"validityPeriod": {"start": iso(start), "end": iso(end)}},
            }
            source = self.store(resource)
            self.truth.row(*source, psv, "drug_exposure", coded.concept_id, coded.source_concept_id,
                           event_date=iso(start))  # fmt: skip
        for n, (item, day, key) in enumerate(history.procedures):
            coded = self.book.procedure(item)
            resource = {
                "resourceType": "Procedure",
                "id": self.stable_uuid("Procedure", person.index, n),
                "status": "completed",
                "code": _concept("SNOMED", coded.code, coded.label),
                "subject": subject,
                "encounter": encounters[key],
                "performedDateTime": iso(day),
            }
            source = self.store(resource)
            self.truth.row(*source, psv, "procedure_occurrence", coded.concept_id, coded.source_concept_id,
                           event_date=iso(day))  # fmt: skip
        self.finish_person(psv)

    def condition_item(self, item: str, history: History, rnd: random.Random) -> str:
        """Site-specific refinements: stage-specific NSCLC and prostate variants (B), prostate metastasis (D)."""
        stage = history.person.stage
        if (
            item == "nsclc"
            and self.config.get("stage_specific_nsclc")
            and self.book.has_condition(f"nsclc_stage_{stage}")
        ):
            return f"nsclc_stage_{stage}"
        if item == "prostate" and self.site == "site_b":
            return rnd.choices(("prostate", "prostate_adenocarcinoma", "prostate_carcinoma"), (6, 3, 1))[0]
        if item == "bone_metastasis" and self.site == "site_d" and history.person.cancer_type == "prostate":
            return "bone_metastasis_prostate" if rnd.random() < 0.5 else item
        return item

    def condition(self, coded: Coded, item: str, subject: dict, encounter: dict, day: int, key: tuple) -> dict:
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "id": self.stable_uuid(*key),
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "code": _concept(coded.vocabulary, coded.code, coded.label),
            "subject": subject,
            "encounter": encounter,
            "onsetDateTime": iso(day),
        }
        if item.startswith("bone_metastasis") and coded.code == "128462008":
            resource["bodySite"] = [{"coding": [BONE_STRUCTURE]}]
        return resource

    def observation(
        self,
        oid: str,
        coded: Coded,
        subject: dict,
        encounter: dict,
        when: str,
        value: float | None,
        unit: str,
        decimals: int,
    ) -> dict:
        resource: dict = {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory" if unit else "exam",
                        }
                    ]
                }
            ],
            "code": _concept(coded.vocabulary, coded.code, coded.label),
            "subject": subject,
            "encounter": encounter,
            "effectiveDateTime": when,
        }
        if value is not None:
            quantity: dict = {"value": json.loads(format_number(value, decimals))}
            if unit:
                quantity |= {"unit": unit, "system": UCUM, "code": unit}
            resource["valueQuantity"] = quantity
        return resource

    # -- deliberate problems ----------------------------------------------------------------------
    def write_unmapped(self, history: History, kind: str, code: str) -> None:
        """A resource whose code is in neither the vocabulary subset nor any map: kept with concept_id 0."""
        person = history.person
        psv = self.person_source_value(person.index)
        subject = self.ref("Patient", self.patient_id(person.index))
        encounter = self.ref("Encounter", self.stable_uuid("Encounter", person.index, 1))
        day = iso(person.diagnosis)
        rid = self.stable_uuid("unmapped", kind, person.index)
        vocabulary = self.book.unmapped_vocabulary(kind)
        if kind == "lab":
            coded = Coded("LOINC", code, "25-Hydroxyvitamin D3 [Mass/volume] in Serum or Plasma", 0, 0)
            resource = self.observation(rid, coded, subject, encounter, day, 31.5, "ng/mL", 1)
            self.finish_unmapped(resource, psv, "measurement", day, 31.5, 8842)
            return
        if kind == "condition":
            resource = {
                "resourceType": "Condition",
                "id": rid,
                "clinicalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
                },
                "code": _concept(vocabulary, code, "Suspected lung cancer"),
                "subject": subject,
                "onsetDateTime": day,
            }
        elif kind == "drug":
            resource = {
                "resourceType": "MedicationRequest",
                "id": rid,
                "status": "completed",
                "intent": "order",
                "medicationCodeableConcept": _concept(vocabulary, code, "ibuprofen 200 MG Oral Tablet"),
                "subject": subject,
                "authoredOn": day,
            }
        else:
            resource = {
                "resourceType": "Procedure",
                "id": rid,
                "status": "completed",
                "code": _concept(vocabulary, code, "Cholecystectomy"),
                "subject": subject,
                "performedDateTime": day,
            }
        self.finish_unmapped(resource, psv, TABLE_OF_KIND[kind], day, None, None)

    def finish_unmapped(
        self, resource: dict, psv: str, table: str, day: str, value: float | None, unit: int | None
    ) -> None:
        source = self.store(resource)
        self.truth.row(*source, psv, table, 0, 0, value, unit, day, UNMAPPED)

    def write_defect(self, history: History, defect: Defect) -> None:
        """One deliberately bad Observation that a correct ETL must quarantine."""
        person = history.person
        psv = self.person_source_value(person.index)
        lab = self.book.lab("alp")
        subject = self.ref("Patient", self.patient_id(person.index))
        encounter = self.ref("Encounter", self.stable_uuid("Encounter", person.index, 1))
        when = iso(person.diagnosis - 2)
        value: float | None = 97.0
        if defect.reason == "implausible_value":
            value = -45.0
        elif defect.reason == "missing_value":
            value = None
        elif defect.reason == "invalid_date":
            when = "2019-02-30"
        elif defect.reason == "unknown_person":
            subject = self.unknown_subject(person.index)
            psv = self.person_source_value(9_999_990 + person.index % 9)
        rid = self.stable_uuid("defect", defect.reason, person.index)
        resource = self.observation(rid, lab.coded, subject, encounter, when, value, lab.unit, 0)
        source = self.store(resource)
        self.truth.row(*source, psv, QUARANTINE, reason=defect.reason)

    def unknown_subject(self, index: int) -> dict:
        return self.ref("Patient", self.person_source_value(9_999_990 + index % 9))


class NdjsonWriter(FhirSiteWriter):
    """Site B: a FHIR bulk export, one NDJSON file per resource type."""

    def __init__(self, site: str, out_dir: Path, seed: int) -> None:
        super().__init__(site, out_dir, seed)
        self.files: dict[str, IO[str]] = {
            t: (self.out_dir / f"{t}.ndjson").open("w", encoding="utf-8", newline="") for t in RESOURCE_TYPES
        }

    def store(self, resource: dict) -> tuple[str, str]:
        kind = resource["resourceType"]
        self.files[kind].write(_dumps(resource) + "\n")
        return f"{kind}.ndjson", resource["id"]

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        super().close()


class BundleWriter(FhirSiteWriter):
    """Site D: one transaction Bundle per patient under ``bundles/``, references by urn:uuid."""

    def __init__(self, site: str, out_dir: Path, seed: int) -> None:
        super().__init__(site, out_dir, seed)
        (self.out_dir / "bundles").mkdir(exist_ok=True)
        self.entries: list[dict] = []
        self.current: str | None = None

    def patient_id(self, index: int) -> str:
        return self.stable_uuid("Patient", index)

    def ref(self, resource_type: str, resource_id: str) -> dict:
        return {"reference": f"urn:uuid:{resource_id}"}

    def bundle_name(self, psv: str) -> str:
        return f"bundles/{psv}.json"

    def store(self, resource: dict) -> tuple[str, str]:
        if resource["resourceType"] == "Patient":
            self.current = resource["identifier"][0]["value"]
        self.entries.append(
            {
                "fullUrl": f"urn:uuid:{resource['id']}",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
        return self.bundle_name(self.current or "orphans"), resource["id"]

    def unknown_subject(self, index: int) -> dict:
        return {"reference": f"urn:uuid:{self.stable_uuid('Patient', 9_999_990 + index % 9)}"}

    def finish_person(self, psv: str) -> None:
        """Write the person's Bundle (extra resources stored after this go into the next flush)."""
        self.flush(psv)

    def flush(self, psv: str) -> None:
        if not self.entries:
            return
        bundle = {
            "resourceType": "Bundle",
            "id": self.stable_uuid("Bundle", psv),
            "type": "transaction",
            "entry": self.entries,
        }
        path = self.out_dir / self.bundle_name(psv)
        mode = "w"
        if path.exists():  # unmapped/defect resources of an already written person: rewrite with them added
            previous = json.loads(path.read_text(encoding="utf-8"))
            bundle["entry"] = previous["entry"] + self.entries
        with path.open(mode, encoding="utf-8", newline="") as handle:
            handle.write(_dumps(bundle) + "\n")
        self.entries = []

    def write_unmapped(self, history: History, kind: str, code: str) -> None:
        self.current = self.person_source_value(history.person.index)
        super().write_unmapped(history, kind, code)
        self.flush(self.current)

    def write_defect(self, history: History, defect: Defect) -> None:
        self.current = self.person_source_value(history.person.index)
        super().write_defect(history, defect)
        self.flush(self.current)
