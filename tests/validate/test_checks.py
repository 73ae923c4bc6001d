"""The DQD catalogue as SQL checks: catalogue coverage, seeded defects caught, clean data passing, site checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.validate.catalogue import load_catalogue
from fedomop.harmonize.validate.checks import (
    CheckContext,
    RowPredicate,
    register_check,
    registered_checks,
    run_checks,
    scalar_query,
    unregister_check,
)
from fedomop.harmonize.validate.checks.field_checks import plausible_bound_sql
from tests.validate.conftest import TODAY
from tests.validate.seeds import DEFECTS

# Foreign keys into vocabulary tables fail on Eunomia: its CONCEPT file is a 2,294-concept subset without
# concept 0 or the type concepts, and DOMAIN/CONCEPT_CLASS/RELATIONSHIP are empty. That is real, not a bug here.
VOCABULARY_TABLES = {"concept", "vocabulary", "domain", "concept_class", "relationship"}


def test_every_catalogue_check_type_is_registered_with_the_catalogue_metadata():
    catalogue = load_catalogue()
    registry = registered_checks()
    assert len(catalogue.check_types) == 27
    assert set(catalogue.check_types) <= set(registry)
    for name, check in catalogue.check_types.items():
        assert registry[name].check == check
    assert {c.severity for c in catalogue.check_types.values()} == {"fatal", "convention", "characterization"}
    assert catalogue.check_types["isPrimaryKey"].kahn_category == "Conformance"
    assert catalogue.check_types["plausibleGender"].kahn_category == "Plausibility"


def test_every_check_type_runs_on_eunomia_and_carries_kahn_and_severity(clean_results):
    catalogue = load_catalogue()
    seen = Counter(r.check_name for r in clean_results.values())
    assert set(catalogue.check_types) <= set(seen), set(catalogue.check_types) - set(seen)
    for result in clean_results.values():
        check = catalogue.check_types[result.check_name]
        assert (result.kahn_category, result.severity) == (check.kahn_category, check.severity)
        assert result.status in ("pass", "fail", "not_applicable", "error")
        assert result.status != "error", (result.check_id, result.reason)
    # thresholds come from the catalogue rows, e.g. VISIT_OCCURRENCE person completeness is 95 %
    assert clean_results["measurePersonCompleteness.visit_occurrence"].threshold == 95
    assert clean_results["plausibleUnitConceptIds.measurement.measurement_concept_id.3000483"].threshold == 5


@pytest.mark.parametrize("defect", DEFECTS, ids=[d.name for d in DEFECTS])
def test_seeded_defect_is_caught_by_its_check(defect, clean_results, seeded_results):
    clean, seeded = clean_results[defect.check_id], seeded_results[defect.check_id]
    assert clean.status == "pass", (clean.num_violated_rows, clean.num_denominator_rows)
    assert seeded.status == "fail"
    assert seeded.num_violated_rows and seeded.num_violated_rows > 0
    assert seeded.pct_violated_rows is not None and seeded.pct_violated_rows > seeded.threshold


def test_seeded_counts_are_exact(seeded_results):
    assert seeded_results["isForeignKey.procedure_occurrence.person_id"].num_violated_rows == 3
    assert seeded_results["isPrimaryKey.person.person_id"].num_violated_rows == 2  # both copies of the row
    assert seeded_results["plausibleAfterBirth.death.death_date"].num_violated_rows == 1
    assert seeded_results["plausibleStartBeforeEnd.visit_occurrence.visit_start_date"].num_violated_rows == 100
    unmapped = seeded_results["standardConceptRecordCompleteness.condition_occurrence.condition_concept_id"]
    assert unmapped.num_violated_rows == 60 and unmapped.num_denominator_rows == 470
    assert seeded_results["plausibleUnitConceptIds.measurement.measurement_concept_id.3000483"].num_violated_rows == 229


def test_clean_eunomia_passes_the_fatal_checks_that_do_not_depend_on_the_vocabulary_subset(clean_results):
    fatal_failures = [r for r in clean_results.values() if r.severity == "fatal" and r.status == "fail"]
    unexpected = []
    for r in fatal_failures:
        spec_row = next(
            row
            for row in load_catalogue().field_rows + load_catalogue().table_rows
            if row["cdmTableName"].lower() == r.table and (row.get("cdmFieldName", "").lower() == (r.field or ""))
        )
        vocabulary_fk = r.check_name == "isForeignKey" and spec_row["fkTableName"].lower() in VOCABULARY_TABLES
        if not vocabulary_fk:
            unexpected.append(r.check_id)
    assert unexpected == []
    for check_id in (
        "isPrimaryKey.person.person_id",
        "isPrimaryKey.measurement.measurement_id",
        "isForeignKey.measurement.person_id",
        "isForeignKey.condition_occurrence.visit_occurrence_id",
        "isRequired.person.gender_concept_id",
        "cdmTable.person",
        "measureObservationPeriodOverlap.observation_period",
        "cdmField.note_nlp.offset",  # the spec's '"offset"' column (reserved word) counts as the field offset
    ):
        assert clean_results[check_id].status == "pass", check_id


def test_absent_table_makes_checks_not_applicable_and_cdm_table_fail(tmp_path):
    db = connect(tmp_path / "tiny.duckdb")
    db.execute("CREATE TABLE person (person_id INTEGER, gender_concept_id INTEGER, year_of_birth INTEGER)")
    db.execute("INSERT INTO person VALUES (1, 8507, 1970), (1, 8532, 1980)")
    results = {r.check_id: r for r in run_checks(db, today=TODAY).results}
    assert results["cdmTable.person"].status == "pass"
    assert results["cdmTable.measurement"].status == "fail"
    assert results["isPrimaryKey.person.person_id"].status == "fail"
    assert results["cdmField.person.race_concept_id"].status == "fail"
    missing = results["isRequired.measurement.measurement_id"]
    assert missing.status == "not_applicable" and "measurement" in missing.reason


def test_plausible_bounds_from_the_catalogue_are_translated():
    ctx = CheckContext(dialect="duckdb", columns={}, today=TODAY)
    assert plausible_bound_sql(ctx, "'19500101'") == ("DATE '1950-01-01'", True)
    assert plausible_bound_sql(ctx, "YEAR(GETDATE())+1") == ("2027", False)
    assert plausible_bound_sql(ctx, "DATEADD(dd,1,GETDATE())") == ("DATE '2026-01-02'", True)
    assert plausible_bound_sql(ctx, "0.0000001") == ("0.0000001", False)
    with pytest.raises(ValidationError, match="cannot read plausible value bound"):
        plausible_bound_sql(ctx, "NOW()")


def test_a_site_registers_its_own_check(seeded_duckdb: Path):
    @register_check(
        "siteVisitLongerThanAYear",
        level="FIELD",
        description="Visits lasting more than 365 days",
        kahn_context="Verification",
        kahn_category="Plausibility",
        kahn_subcategory="Temporal",
        severity="characterization",
    )
    def long_visits(ctx):
        from fedomop.harmonize.validate.checks import CheckInstance

        instance = CheckInstance(ctx_check("siteVisitLongerThanAYear"), "visit_occurrence", "visit_end_date")
        yield RowPredicate(instance, "visit_end_date > visit_start_date + 365")

    @register_check(
        "siteDeathsPerPerson",
        level="TABLE",
        description="Persons with more than one death record",
        kahn_context="Verification",
        kahn_category="Conformance",
        severity="fatal",
    )
    def deaths(ctx):
        from fedomop.harmonize.validate.checks import CheckInstance

        instance = CheckInstance(ctx_check("siteDeathsPerPerson"), "death", threshold=0)
        yield scalar_query(
            instance,
            "SELECT COUNT(*) FROM (SELECT person_id FROM death GROUP BY person_id HAVING COUNT(*) > 1) d",
            "SELECT COUNT(DISTINCT person_id) FROM death",
        )

    def ctx_check(name):
        return registered_checks()[name].check

    db = connect(seeded_duckdb, read_only=True)
    try:
        run = run_checks(db, checks=["siteVisitLongerThanAYear", "siteDeathsPerPerson"], today=TODAY)
        results = {r.check_id: r for r in run.results}
        assert results["siteVisitLongerThanAYear.visit_occurrence.visit_end_date"].status == "pass"
        deaths_result = results["siteDeathsPerPerson.death"]
        assert (deaths_result.status, deaths_result.severity, deaths_result.kahn_category) == (
            "pass",
            "fatal",
            "Conformance",
        )
        assert deaths_result.num_denominator_rows == 3
    finally:
        db.dispose()
        unregister_check("siteVisitLongerThanAYear")
        unregister_check("siteDeathsPerPerson")


def test_a_site_check_without_metadata_is_refused():
    with pytest.raises(ValidationError, match="lacks level, description"):

        @register_check("siteIncomplete")
        def incomplete(ctx):
            return []


def test_unknown_check_names_are_an_error(eunomia_duckdb):
    db = connect(eunomia_duckdb, read_only=True)
    with pytest.raises(ValidationError, match="unknown check"):
        run_checks(db, checks=["isRequired", "noSuchCheck"])
    db.dispose()
