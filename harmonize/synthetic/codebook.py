"""Per-site coding decisions read from ``codes.yaml`` and ``sites.yaml``.

The writers ask the codebook how a site writes an item (code, label, unit) and what a
correct ETL must turn it into (standard concept, source concept, value in the standard
unit). Keeping both answers in one place is what makes the ground truth trustworthy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from fedomop.harmonize.ground.errors import MappingError

SITES = ("site_a", "site_b", "site_c", "site_d")
LOCAL_VOCABULARY = {"lab": "SITE_C_LAB", "drug": "SITE_C_DRUG", "procedure": "SITE_C_PROC"}
VOCABULARY_OF_SYSTEM = {"snomed": "SNOMED", "icd10cm": "ICD10CM"}
UNIT_CONCEPTS = {"U/L": 8645, "mg/dL": 8840, "ng/mL": 8842, "g/dL": 8713, "g/L": 8636, "mmol/L": 8753}
UNIT_CONCEPTS |= {"µmol/L": 8749, "µg/L": 8748, "": 0}


@dataclass(frozen=True)
class Coded:
    """How a site writes one record's code, and the concepts it must become."""

    vocabulary: str  # vocabulary_id the harmonizer resolves the code in (SNOMED, ICD10CM, SITE_C_LAB, ...)
    code: str
    label: str
    concept_id: int  # expected standard concept (0 = unmapped on purpose)
    source_concept_id: int
    via_site_map: bool = False


@dataclass(frozen=True)
class LabCoding:
    """A lab as a site writes it, with the conversion to the standard unit."""

    coded: Coded
    unit: str  # as written by the site
    unit_concept_written: int
    to_standard: float  # standard value = written value * to_standard
    decimals: int  # decimals the site writes
    standard_unit_concept: int


@cache
def _yaml(name: str) -> dict:
    return yaml.safe_load(resources.files("fedomop.harmonize.synthetic").joinpath(name).read_text(encoding="utf-8"))


def site_configs() -> dict[str, dict]:
    """sites.yaml: size, case mix and dialect of each site."""
    return _yaml("sites.yaml")


def codes() -> dict:
    """codes.yaml: the coding of every clinical item at every site."""
    return _yaml("codes.yaml")


class Codebook:
    """The coding rules of one site."""

    def __init__(self, site: str) -> None:
        if site not in SITES:
            raise MappingError(f"unknown sample site {site!r}", fix=f"choose from {', '.join(SITES)}")
        self.site = site
        self.config = site_configs()[site]
        self._codes = codes()
        self.local = site == "site_c"
        self._labs: dict[str, LabCoding] = {}

    def condition_items(self, item: str) -> dict:
        """The codes.yaml entry of a condition for this site (falls back to the generic cancer item)."""
        entry = self._codes["conditions"][item]
        if self.site not in entry:
            raise MappingError(f"{self.site} has no coding for condition {item!r}", where="codes.yaml")
        return entry

    def condition(self, item: str, rnd: random.Random) -> Coded:
        """Pick the code the site writes for a condition (some items have several codes)."""
        entry = self._codes["conditions"][item]
        spec = entry[self.site]
        code = rnd.choice(spec["codes"]) if len(spec["codes"]) > 1 else spec["codes"][0]
        via_map = spec.get("via") == "site_map"
        source = 0 if via_map else int(spec.get("source_concept", entry["concept"]))
        return Coded(self.condition_vocabulary(spec), str(code), spec["label"], entry["concept"], source, via_map)

    def condition_vocabulary(self, spec: dict) -> str:
        """The vocabulary of a condition code at this site."""
        if "system" in spec:
            return VOCABULARY_OF_SYSTEM[spec["system"]]
        return self.config["condition_vocabulary"]

    def has_condition(self, item: str) -> bool:
        """Whether this site has its own coding for a condition item (e.g. stage-specific NSCLC at site B)."""
        return self.site in self._codes["conditions"].get(item, {})

    def lab(self, item: str) -> LabCoding:
        """The site's code and unit for a lab, and the conversion to the standard unit (cached)."""
        found = self._labs.get(item)
        if found is None:
            found = self._labs[item] = self._lab(item)
        return found

    def _lab(self, item: str) -> LabCoding:
        entry = self._codes["labs"][item]
        if self.local:
            local = entry["site_c"]
            coded = Coded(LOCAL_VOCABULARY["lab"], local["code"], local["label"], entry["concept"], 0, True)
            return LabCoding(
                coded,
                local["unit"],
                local["unit_concept"],
                float(local["to_standard"]),
                int(local["decimals"]),
                entry["unit_concept"],
            )
        coded = Coded("LOINC", entry["loinc"], entry["label"], entry["concept"], entry["concept"])
        return LabCoding(
            coded, entry["unit"], entry["unit_concept"], 1.0, int(entry["decimals"]), entry["unit_concept"]
        )

    def drug(self, item: str) -> Coded:
        """The site's code for a drug."""
        return self._coded("drugs", "drug", item, "RxNorm", "rxnorm")

    def procedure(self, item: str) -> Coded:
        """The site's code for a procedure."""
        return self._coded("procedures", "procedure", item, "SNOMED", "snomed")

    def _coded(self, section: str, kind: str, item: str, vocabulary: str, code_key: str) -> Coded:
        """A standard code (vocabulary subset) everywhere but site C, which writes a local code (site map)."""
        entry = self._codes[section][item]
        if self.local:
            local = entry["site_c"]
            return Coded(LOCAL_VOCABULARY[kind], local["code"], local["label"], entry["concept"], 0, True)
        return Coded(vocabulary, entry[code_key], entry["label"], entry["concept"], entry["concept"])

    def unmapped(self, kind: str) -> list[str]:
        """Codes this site writes on purpose that map to nothing."""
        return list(self._codes["unmapped"][self.site][kind])

    def unmapped_vocabulary(self, kind: str) -> str:
        """The vocabulary an unmapped code of this kind is written in."""
        if self.local and kind != "condition":
            return LOCAL_VOCABULARY[kind]
        return {
            "condition": self.config.get("condition_vocabulary", "SNOMED")
            if self.config.get("condition_vocabulary") != "mixed"
            else "SNOMED",
            "lab": "LOINC",
            "drug": "RxNorm",
            "procedure": "SNOMED",
        }[kind]

    def site_map_rows(self) -> list[dict[str, str]]:
        """The site's source_to_concept_map rows (OMOP STCM columns) for every code it maps itself."""
        rows: dict[tuple[str, str], dict[str, str]] = {}

        def add(vocabulary: str, code: str, label: str, target: int, target_vocabulary: str) -> None:
            rows[(vocabulary, code)] = {
                "source_code": code,
                "source_concept_id": "0",
                "source_vocabulary_id": vocabulary,
                "source_code_description": label,
                "target_concept_id": str(target),
                "target_vocabulary_id": target_vocabulary,
                "valid_start_date": "1970-01-01",
                "valid_end_date": "2099-12-31",
                "invalid_reason": "",
            }

        for entry in self._codes["conditions"].values():
            spec = entry.get(self.site)
            if spec and spec.get("via") == "site_map":
                for code in spec["codes"]:
                    add(self.condition_vocabulary(spec), str(code), spec["label"], entry["concept"], "SNOMED")
        if self.local:
            for kind, vocabulary, target_vocabulary in (
                ("labs", "SITE_C_LAB", "LOINC"),
                ("drugs", "SITE_C_DRUG", "RxNorm"),
                ("procedures", "SITE_C_PROC", "SNOMED"),
            ):
                for entry in self._codes[kind].values():
                    local = entry["site_c"]
                    add(vocabulary, local["code"], local["label"], entry["concept"], target_vocabulary)
        return [rows[key] for key in sorted(rows)]

    def visit_concept(self, kind: str) -> int:
        """OMOP visit concept of a visit kind (OP, IP, ER)."""
        return int(self._codes["visits"][kind]["concept"])

    def gender_concept(self, male: bool) -> int:
        """8507 or 8532."""
        return int(self._codes["gender"]["M" if male else "F"])

    @property
    def type_concept(self) -> int:
        """The type concept of every record (EHR)."""
        return int(self._codes["type_concept"])


def to_written(value: float, lab: LabCoding) -> float:
    """The value as the site writes it: converted to the site's unit and rounded to its decimals."""
    return round(value / lab.to_standard, lab.decimals)


def to_standard(written: float, lab: LabCoding) -> float:
    """What a correct ETL stores: the written value converted back to the standard unit."""
    return round(written * lab.to_standard, 6)


def format_number(value: float, decimals: int) -> str:
    """Fixed decimals, no exponent, so files are byte-identical across runs."""
    return f"{value:.{decimals}f}"
