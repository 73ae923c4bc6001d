"""No silent truncation (docs/mapping.md "Values longer than their OMOP column"): a 64-character FHIR id into
person_source_value (varchar(50)) is loaded as prefix~hash and recorded whole in fedomop_shortened."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb

from fedomop.harmonize.run import run_mapping
from fedomop.harmonize.run.shorten import short_form
from tests.conftest import MAPPINGS

LONG_ID = "p" * 30 + "-" + "0123456789abcdef0123456789abcdef0"  # 64 characters, a valid FHIR id
SNOMED = "http://snomed.info/sct"


def test_short_form_is_a_prefix_and_a_digest_of_the_whole_value() -> None:
    digest = hashlib.sha256(LONG_ID.encode()).hexdigest()[:8]
    assert short_form(LONG_ID, 50) == LONG_ID[:41] + "~" + digest
    assert len(short_form(LONG_ID, 50)) == 50
    assert short_form(LONG_ID + "x", 50) != short_form(LONG_ID, 50)  # same 41-character prefix, still distinct


def test_an_over_long_id_is_loaded_in_short_form_and_recorded_whole(tmp_path: Path) -> None:
    resources = {
        "Patient.ndjson": [{"resourceType": "Patient", "id": LONG_ID, "gender": "male", "birthDate": "1950-01-02"}],
        "Condition.ndjson": [
            {
                "resourceType": "Condition",
                "id": "c1",
                "subject": {"reference": f"Patient/{LONG_ID}"},
                "code": {"coding": [{"system": SNOMED, "code": "254637007"}]},
                "onsetDateTime": "2020-01-01",
            }
        ],
    }
    for name, rows in resources.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "out.duckdb"
    vocabulary = MAPPINGS.parent / "sample_data" / "vocabulary"
    report = run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=vocabulary)
    expected = LONG_ID[:41] + "~" + hashlib.sha256(LONG_ID.encode()).hexdigest()[:8]
    # two: the id, and cdm_source.vocabulary_version (varchar(20)) from the sample vocabulary's longer version text
    assert report.balanced and report.values_shortened == 2
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select person_source_value from person").fetchall() == [(expected,)]
        # the condition still reaches its person: keys join on the whole id, never on the short form
        assert con.execute("select count(*) from condition_occurrence join person using (person_id)").fetchone() == (1,)
        assert con.execute(
            "select omop_table, omop_column, max_length, source, source_file, source_row, full_value, short_value "
            "from fedomop_shortened where omop_table = 'person'"
        ).fetchall() == [
            ("person", "person_source_value", 50, "patients", "Patient.ndjson", LONG_ID, LONG_ID, expected)
        ]
        assert con.execute("select values_shortened from fedomop_run").fetchone() == (2,)
        version = con.execute("select vocabulary_version from vocabulary where vocabulary_id = 'None'").fetchone()
        assert con.execute("select full_value from fedomop_shortened where omop_table = 'cdm_source'").fetchone() == (
            version
        )
