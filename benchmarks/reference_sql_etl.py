"""Reference ETL for site A written directly in DuckDB SQL: the fair peer of ``fedomop map`` (issue 18).

What a capable hospital team would write instead of fedomop: load the CSVs and the vocabulary into DuckDB and
``INSERT ... SELECT`` every OMOP table with joins to CONCEPT / CONCEPT_RELATIONSHIP, the site's
source_to_concept_map first. It follows ``mappings/site_a.yaml`` (and ``common/oncology.yaml``) rule by rule --
the same parsing, date bounds, duplicate ids, unknown persons, unit factors and plausible ranges, domain routing
between the four event tables, observation periods, cancer episodes and eras -- but keeps no lineage, no
quarantine and no reconciliation: rejected rows are simply not inserted. The OMOP tables come from the official
DDL (fedomop's copy of it, no keys during the load), keys and indexes are added afterwards, as ``fedomop map`` does.

``--check DB`` compares the OMOP rows with a database written by ``fedomop map`` table by table, surrogate ids
replaced by the natural keys they stand for (person_source_value, visit_source_value), as multisets
(``EXCEPT ALL`` both ways); any difference exits 1.

    python benchmarks/reference_sql_etl.py --source sample_data/site_a --db /tmp/ref.duckdb --check out/site_a.duckdb
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
VOCABULARY = REPO / "sample_data" / "vocabulary"
SOURCES = ("patients", "encounters", "conditions", "medications", "procedures", "observations")
VOCABULARY_TABLES = ("concept", "concept_relationship", "concept_ancestor", "vocabulary", "domain", "concept_class",
                     "relationship", "drug_strength")  # fmt: skip
EVENT_TABLES = {  # declared table of each event source: (source, code column, vocabulary)
    "condition_occurrence": ("conditions", "icd10_code", "ICD10CM"),
    "drug_exposure": ("medications", "rxnorm_code", "RxNorm"),
    "procedure_occurrence": ("procedures", "snomed_code", "SNOMED"),
    "measurement": ("observations", "loinc_code", "LOINC"),
}
DOMAIN_TABLE = "CASE r.domain_id WHEN 'Condition' THEN 'condition_occurrence' WHEN 'Drug' THEN 'drug_exposure' " \
    "WHEN 'Procedure' THEN 'procedure_occurrence' WHEN 'Measurement' THEN 'measurement' ELSE NULL END"  # fmt: skip
PERSON_KEYS = "(SELECT patient_id AS pid, person_id FROM per)"
ROUTED_ELSEWHERE = ("Observation", "Device", "Specimen", "Visit", "Note", "Episode")  # not covered: refused below


def _date(column: str) -> str:
    return f"try_strptime(\"{column}\", '%Y-%m-%d')"


def _failed(column: str, parsed: str) -> str:
    """The source had text but it did not parse (fedomop quarantines such rows)."""
    return f"(NULLIF(trim(\"{column}\"), '') IS NOT NULL AND {parsed} IS NULL)"


def _bounds(column: str, earliest: str, today: dt.date, *, start: bool) -> str:
    """Plausible dates (mapping date_bounds defaults): not before ``earliest``; starts not after today + 1 day."""
    parsed = f"CAST({_date(column)} AS DATE)"
    late = f" OR {parsed} > DATE '{today + dt.timedelta(days=1)}'" if start else ""
    return f"({parsed} < DATE '{earliest}'{late})"


def load_sources(con: duckdb.DuckDBPyConnection, source: Path, vocabulary: Path) -> None:
    """The extract as text (as read), numbered rows; the vocabulary release and the site's source_to_concept_map."""
    for name in SOURCES:
        path = source / f"{name}.csv"
        con.execute(
            f"CREATE TEMP TABLE src_{name} AS SELECT row_number() OVER () AS rn, * FROM read_csv('{path}', "
            "all_varchar = true, header = true, quote = '\"', escape = '\"')"
        )
    for table in VOCABULARY_TABLES:
        path = vocabulary / f"{table.upper()}.csv"
        if path.exists():
            columns = [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
            dates = [c for c in columns if c.endswith("_date")]
            replace = ", ".join(f"CAST(strptime({c}, '%Y%m%d') AS DATE) AS {c}" for c in dates)
            con.execute(
                f"INSERT INTO {table} BY NAME SELECT * {f'REPLACE ({replace})' if dates else ''} "
                f"FROM read_csv('{path}', delim = '\t', header = true, quote = '', all_varchar = true)"
            )
    con.execute(
        f"INSERT INTO source_to_concept_map BY NAME SELECT * FROM read_csv('{source / 'source_to_concept_map.csv'}', "
        "header = true, all_varchar = true)"
    )


def code_map_sql() -> str:
    """(vocabulary, code) -> source concept and standard target(s): site map first, then "Maps to", then itself."""
    codes = " UNION ".join(
        f'SELECT DISTINCT \'{vocab}\' AS v, "{column}" AS c FROM src_{source} WHERE "{column}" IS NOT NULL'
        for source, column, vocab in EVENT_TABLES.values()
    )
    return f"""
    CREATE TEMP TABLE code_map AS
    WITH codes AS ({codes}),
    src AS (
        SELECT k.v, k.c, c.concept_id, c.standard_concept FROM codes k
        JOIN concept c ON c.vocabulary_id = k.v AND c.concept_code = k.c
        QUALIFY row_number() OVER (PARTITION BY k.v, k.c ORDER BY c.invalid_reason IS NOT NULL, c.concept_id) = 1
    ),
    site AS (
        SELECT source_vocabulary_id AS v, source_code AS c, CAST(source_concept_id AS INTEGER) AS source_concept_id,
               CAST(target_concept_id AS INTEGER) AS target
        FROM source_to_concept_map m JOIN codes k ON k.v = m.source_vocabulary_id AND k.c = m.source_code
        WHERE m.invalid_reason IS NULL
    ),
    maps_to AS (
        SELECT DISTINCT s.v, s.c, r.concept_id_2 AS target FROM src s
        JOIN concept_relationship r ON r.concept_id_1 = s.concept_id AND r.relationship_id = 'Maps to'
             AND r.invalid_reason IS NULL
        JOIN concept t ON t.concept_id = r.concept_id_2
    ),
    vocab AS (
        SELECT v, c, target FROM maps_to
        UNION ALL
        SELECT v, c, concept_id FROM src s WHERE standard_concept = 'S'
            AND NOT EXISTS (SELECT 1 FROM maps_to m WHERE m.v = s.v AND m.c = s.c)
    ),
    chosen AS (
        SELECT DISTINCT v, c, target FROM site
        UNION ALL
        SELECT v, c, target FROM vocab x WHERE NOT EXISTS (SELECT 1 FROM site s WHERE s.v = x.v AND s.c = x.c)
    )
    SELECT k.v, k.c, COALESCE(s.concept_id, (SELECT MAX(source_concept_id) FROM site z WHERE z.v = k.v
           AND z.c = k.c), 0) AS source_concept_id, COALESCE(ch.target, 0) AS concept_id, t.domain_id
    FROM codes k
    LEFT JOIN src s ON s.v = k.v AND s.c = k.c
    LEFT JOIN chosen ch ON ch.v = k.v AND ch.c = k.c
    LEFT JOIN concept t ON t.concept_id = ch.target AND ch.target <> 0
    """


def keyed_tables_sql(today: dt.date) -> list[str]:
    """location, person, death, visit_occurrence: a bad row is dropped before a repeated id keeps its first row."""
    birth_ok = f"NOT {_failed('birth_date', _date('birth_date'))} AND NOT {_bounds('birth_date', '1850-01-01', today, start=True)}"  # noqa: E501
    start_ok = f"NOT {_failed('start_date', _date('start_date'))} AND NOT {_bounds('start_date', '1900-01-01', today, start=True)}"  # noqa: E501
    end_ok = (
        f"NOT {_failed('end_date', _date('end_date'))} AND NOT {_bounds('end_date', '1900-01-01', today, start=False)}"  # noqa: E501
    )
    death_ok = f"NOT {_failed('death_date', _date('death_date'))} AND NOT {_bounds('death_date', '1900-01-01', today, start=True)}"  # noqa: E501
    return [
        """CREATE TEMP TABLE loc AS SELECT row_number() OVER (ORDER BY rn) AS location_id, * FROM src_patients
           WHERE patient_id IS NOT NULL QUALIFY row_number() OVER (PARTITION BY patient_id ORDER BY rn) = 1""",
        """INSERT INTO location (location_id, address_1, city, zip, location_source_value)
           SELECT location_id, left(address, 50), left(city, 50), left(zip, 9), left(patient_id, 50) FROM loc""",
        f"""CREATE TEMP TABLE per AS SELECT row_number() OVER (ORDER BY rn) AS person_id, * FROM src_patients
            WHERE patient_id IS NOT NULL AND {birth_ok} AND birth_date IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY patient_id ORDER BY rn) = 1""",
        f"""INSERT INTO person (person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth,
            birth_datetime, race_concept_id, ethnicity_concept_id, location_id, person_source_value,
            gender_source_value, race_source_value, ethnicity_source_value)
            SELECT p.person_id, CASE sex WHEN 'M' THEN 8507 WHEN 'F' THEN 8532 ELSE 0 END,
                   year({_date("birth_date")}), month({_date("birth_date")}), day({_date("birth_date")}),
                   {_date("birth_date")},
                   CASE race WHEN 'White' THEN 8527 WHEN 'Black or African American' THEN 8516
                             WHEN 'Asian' THEN 8515 ELSE 0 END,
                   CASE ethnicity WHEN 'Hispanic or Latino' THEN 38003563
                                  WHEN 'Not Hispanic or Latino' THEN 38003564 ELSE 0 END,
                   l.location_id, left(p.patient_id, 50), left(sex, 50), left(race, 50), left(ethnicity, 50)
            FROM per p LEFT JOIN (SELECT patient_id AS lpid, location_id FROM loc) l ON l.lpid = p.patient_id""",
        f"""INSERT INTO death (person_id, death_date, death_datetime, death_type_concept_id)
            SELECT p.person_id, CAST({_date("death_date")} AS DATE), {_date("death_date")}, 32817
            FROM src_patients s JOIN {PERSON_KEYS} p ON p.pid = s.patient_id
            WHERE death_date IS NOT NULL AND {death_ok}
            QUALIFY row_number() OVER (PARTITION BY p.person_id ORDER BY s.rn) = 1""",
        f"""CREATE TEMP TABLE vis AS SELECT row_number() OVER (ORDER BY e.rn) AS visit_occurrence_id, p.person_id,
                   e.encounter_id, e.encounter_type, {_date("start_date")} AS s, {_date("end_date")} AS e
            FROM src_encounters e JOIN {PERSON_KEYS} p ON p.pid = e.patient_id
            WHERE e.encounter_id IS NOT NULL AND e.start_date IS NOT NULL AND {start_ok} AND {end_ok}
            QUALIFY row_number() OVER (PARTITION BY e.encounter_id ORDER BY e.rn) = 1""",
    ]


def events_sql(today: dt.date) -> list[str]:
    """The four event sources, resolved through ``code_map`` (one row per target), routed by the target's domain."""
    parts = []
    for table, (source, column, vocab) in EVENT_TABLES.items():
        date_col = {"conditions": "onset_date", "medications": "start_date", "procedures": "performed_on",
                    "observations": "observed_on"}[source]  # fmt: skip
        end = "end_date" if source == "medications" else None
        checks = [f"x.\"{date_col}\" IS NOT NULL",
                  f"NOT {_failed(date_col, _date(date_col))}",
                  f"NOT {_bounds(date_col, '1900-01-01', today, start=True)}"]  # fmt: skip
        if end:
            checks += [f"NOT {_failed(end, _date(end))}", f"NOT {_bounds(end, '1900-01-01', today, start=False)}"]
        value, unit, value_source = "NULL::DOUBLE", "NULL::VARCHAR", "NULL::VARCHAR"
        if source == "observations":
            value = "TRY_CAST(trim(x.value) AS DOUBLE)"
            unit, value_source = "x.unit", "x.value"
            checks += ["x.value IS NOT NULL", f"NOT {_failed('value', 'TRY_CAST(trim(x.value) AS DOUBLE)')}"]
        parts.append(
            f"""SELECT '{table}' AS declared, x.rn, p.person_id, v.visit_occurrence_id, x."{column}" AS code,
                   {_date(date_col)} AS s, {_date(end) if end else "NULL::TIMESTAMP"} AS e, {value} AS value,
                   {unit} AS unit_source, {value_source} AS value_source,
                   COALESCE(r.concept_id, 0) AS concept_id, COALESCE(r.source_concept_id, 0) AS source_concept_id,
                   COALESCE({DOMAIN_TABLE}, '{table}') AS target, r.domain_id
            FROM src_{source} x JOIN {PERSON_KEYS} p ON p.pid = x.patient_id
            LEFT JOIN vis v ON v.encounter_id = x.encounter_id
            LEFT JOIN code_map r ON r.v = '{vocab}' AND r.c = x."{column}"
            WHERE {" AND ".join(checks)}"""
        )
    units = """CREATE TEMP TABLE unit_rule AS
        SELECT c.concept_id AS analyte, r.unit_code, r.factor, u.concept_id AS standard_concept, r.lo, r.hi
        FROM (VALUES ('6768-6', '[U]/L', '[U]/L', 1.0, 0.0, 5000.0),
                     ('17861-6', 'mg/dL', 'mg/dL', 1.0, 0.0, 30.0), ('17861-6', 'mmol/L', 'mg/dL', 4.008, 0.0, 30.0),
                     ('2857-1', 'ng/mL', 'ng/mL', 1.0, 0.0, 100000.0), ('2857-1', 'ug/L', 'ng/mL', 1.0, 0.0, 100000.0),
                     ('718-7', 'g/dL', 'g/dL', 1.0, 0.0, 30.0), ('718-7', 'g/L', 'g/dL', 0.1, 0.0, 30.0),
                     ('2160-0', 'mg/dL', 'mg/dL', 1.0, 0.0, 40.0), ('2160-0', 'umol/L', 'mg/dL', 0.01131, 0.0, 40.0))
             r(code, unit_code, standard, factor, lo, hi)
        JOIN concept c ON c.vocabulary_id = 'LOINC' AND c.concept_code = r.code AND c.standard_concept = 'S'
             AND c.invalid_reason IS NULL
        JOIN concept u ON u.vocabulary_id = 'UCUM' AND u.concept_code = r.standard AND u.standard_concept = 'S'
             AND u.invalid_reason IS NULL"""
    converted = (
        """CREATE TEMP TABLE ev AS
        WITH raw AS ("""
        + " UNION ALL ".join(parts)
        + """),
        aliased AS (
            SELECT *, CASE unit_source WHEN 'U/L' THEN '[U]/L' WHEN 'µg/L' THEN 'ug/L' WHEN 'µmol/L' THEN 'umol/L'
                      ELSE unit_source END AS unit_code FROM raw
        ),
        ucum AS (SELECT concept_code, MIN(concept_id) AS concept_id FROM concept
                 WHERE vocabulary_id = 'UCUM' AND invalid_reason IS NULL GROUP BY concept_code)
        SELECT a.*, a.concept_id IN (SELECT analyte FROM unit_rule) AS has_rule, f.factor,
               CASE WHEN f.factor IS NOT NULL THEN round(a.value * f.factor, 6) ELSE a.value END AS converted,
               CASE WHEN a.unit_code IS NULL THEN NULL  -- CDM field spec: no unit in the source -> NULL
                    WHEN f.factor IS NOT NULL THEN f.standard_concept ELSE COALESCE(u.concept_id, 0) END
                   AS unit_concept_id, f.lo, f.hi
        FROM aliased a
        LEFT JOIN unit_rule f ON a.declared = 'measurement' AND f.analyte = a.concept_id AND f.unit_code = a.unit_code
        LEFT JOIN ucum u ON a.declared = 'measurement' AND u.concept_code = a.unit_code
        WHERE a.declared <> 'measurement' OR NOT (
            (a.concept_id IN (SELECT analyte FROM unit_rule) AND a.value IS NOT NULL AND f.factor IS NULL)
            OR (f.factor IS NOT NULL AND (round(a.value * f.factor, 6) < f.lo OR round(a.value * f.factor, 6) > f.hi)))
    """
    )
    common = "FROM ev WHERE target = '{t}' ORDER BY declared, rn"
    inserts = [
        f"""INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id,
            condition_start_date, condition_start_datetime, condition_type_concept_id, visit_occurrence_id,
            condition_source_value, condition_source_concept_id)
            SELECT row_number() OVER (), person_id, concept_id, CAST(s AS DATE), s, 32817, visit_occurrence_id,
                   left(code, 50), source_concept_id {common.format(t="condition_occurrence")}""",
        f"""INSERT INTO drug_exposure (drug_exposure_id, person_id, drug_concept_id, drug_exposure_start_date,
            drug_exposure_start_datetime, drug_exposure_end_date, drug_exposure_end_datetime, drug_type_concept_id,
            visit_occurrence_id, drug_source_value, drug_source_concept_id)
            SELECT row_number() OVER (), person_id, concept_id, CAST(s AS DATE), s, CAST(COALESCE(e, s) AS DATE), e,
                   32817, visit_occurrence_id, left(code, 50), source_concept_id {common.format(t="drug_exposure")}""",
        f"""INSERT INTO procedure_occurrence (procedure_occurrence_id, person_id, procedure_concept_id, procedure_date,
            procedure_datetime, procedure_end_date, procedure_end_datetime, procedure_type_concept_id,
            visit_occurrence_id, procedure_source_value, procedure_source_concept_id)
            SELECT row_number() OVER (), person_id, concept_id, CAST(s AS DATE), s, CAST(e AS DATE), e, 32817,
                   visit_occurrence_id, left(code, 50), source_concept_id {common.format(t="procedure_occurrence")}""",
        f"""INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date,
            measurement_datetime, measurement_type_concept_id, value_as_number, unit_concept_id, visit_occurrence_id,
            measurement_source_value, measurement_source_concept_id, unit_source_value, value_source_value)
            SELECT row_number() OVER (), person_id, concept_id, CAST(s AS DATE), s, 32817, converted,
                   CASE WHEN declared = 'measurement' THEN unit_concept_id END, visit_occurrence_id, left(code, 50),
                   source_concept_id, left(unit_source, 50), left(value_source, 50)
            {common.format(t="measurement")}""",
    ]
    return [units, converted, *inserts]


SPANS = """
    SELECT person_id, visit_start_date AS f, visit_end_date AS t FROM visit_occurrence
    UNION ALL SELECT person_id, condition_start_date, COALESCE(condition_end_date, condition_start_date)
        FROM condition_occurrence
    UNION ALL SELECT person_id, drug_exposure_start_date, COALESCE(drug_exposure_end_date, drug_exposure_start_date)
        FROM drug_exposure
    UNION ALL SELECT person_id, procedure_date, COALESCE(procedure_end_date, procedure_date) FROM procedure_occurrence
    UNION ALL SELECT person_id, measurement_date, measurement_date FROM measurement
"""


def derived_sql(cancer_codes: tuple[str, ...]) -> list[str]:
    """Visits first (an open visit ends at the person's last date), observation_period, episodes, cdm_source."""
    listed = ", ".join(f"'{c}'" for c in cancer_codes)
    return [
        f"""INSERT INTO visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date,
            visit_start_datetime, visit_end_date, visit_end_datetime, visit_type_concept_id, visit_source_value)
            WITH spans(person_id, f, t) AS ({SPANS.split("UNION ALL", 1)[1]}
                 UNION ALL SELECT person_id, CAST(s AS DATE), CAST(COALESCE(e, s) AS DATE) FROM vis),
            last AS (SELECT person_id, MAX(greatest(f, t)) AS last FROM spans GROUP BY person_id)
            SELECT v.visit_occurrence_id, v.person_id,
                   CASE encounter_type WHEN 'outpatient' THEN 9202 WHEN 'inpatient' THEN 9201
                                       WHEN 'emergency' THEN 9203 ELSE 0 END,
                   CAST(v.s AS DATE), v.s,
                   CASE WHEN v.e IS NULL THEN greatest(CAST(v.s AS DATE), l.last) ELSE CAST(v.e AS DATE) END, v.e,
                   32817, left(v.encounter_id, 50)
            FROM vis v LEFT JOIN last l ON l.person_id = v.person_id""",
        f"""INSERT INTO observation_period (observation_period_id, person_id, observation_period_start_date,
            observation_period_end_date, period_type_concept_id)
            SELECT row_number() OVER (ORDER BY person_id), person_id, MIN(f), greatest(MIN(f), MAX(t)), 32817
            FROM ({SPANS}) spans WHERE person_id IN (SELECT person_id FROM person) GROUP BY person_id""",
        f"""CREATE TEMP TABLE cancer AS
            WITH roots AS (SELECT MIN(concept_id) AS concept_id FROM concept WHERE vocabulary_id = 'SNOMED'
                           AND concept_code IN ({listed}) AND standard_concept = 'S' AND invalid_reason IS NULL
                           GROUP BY concept_code)
            SELECT concept_id FROM roots UNION
            SELECT descendant_concept_id FROM concept_ancestor WHERE ancestor_concept_id IN (SELECT * FROM roots)""",
        """CREATE TEMP TABLE ep AS
            SELECT row_number() OVER (ORDER BY person_id, condition_concept_id) AS episode_id, * FROM (
                SELECT * FROM condition_occurrence WHERE condition_concept_id IN (SELECT concept_id FROM cancer)
                QUALIFY row_number() OVER (PARTITION BY person_id, condition_concept_id
                                           ORDER BY condition_start_date, condition_occurrence_id) = 1)""",
        """INSERT INTO episode (episode_id, person_id, episode_concept_id, episode_start_date, episode_start_datetime,
            episode_object_concept_id, episode_type_concept_id, episode_source_value)
            SELECT episode_id, person_id, 32528, condition_start_date, condition_start_datetime, condition_concept_id,
                   32817, condition_source_value FROM ep""",
        """INSERT INTO episode_event (episode_id, event_id, episode_event_field_concept_id)
            SELECT ep.episode_id, c.condition_occurrence_id, 1147127 FROM condition_occurrence c
            JOIN ep ON ep.person_id = c.person_id AND ep.condition_concept_id = c.condition_concept_id""",
        """INSERT INTO cdm_source (cdm_source_name, cdm_source_abbreviation, cdm_holder, source_release_date,
            cdm_release_date, cdm_version, cdm_version_concept_id, vocabulary_version)
            SELECT 'Site A (CSV extract)', 'site_a', 'fedomop sample data', current_date, current_date, '5.4', 756265,
                   (SELECT vocabulary_version FROM vocabulary WHERE vocabulary_id = 'None')""",
    ]


CANCER_CODES = ("93974005", "254837009", "254637007", "254632001", "363406005")


def run(source: Path, db: Path, vocabulary: Path, *, indexes: bool = True) -> dict[str, float]:
    """Build the site database at ``db`` (replaced); returns seconds per phase."""
    from fedomop.harmonize.cdm.ddl import create_indexes
    from fedomop.harmonize.cdm.schema import add_primary_keys, create_cdm
    from fedomop.harmonize.ground.db import connect
    from fedomop.harmonize.run.eras import condition_era_sql, dose_era_sql, drug_era_sql
    from fedomop.harmonize.tables import TARGETS

    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    for stale in (db, Path(f"{db}.wal")):
        stale.unlink(missing_ok=True)
    site = connect(db)  # the official DDL, no keys during the load
    create_cdm(site.engine, constraints="none", tables=list(TARGETS))
    create_cdm(site.engine)
    site.dispose()
    phase("ddl")
    today = dt.datetime.now(dt.UTC).date()
    with duckdb.connect(str(db)) as con:
        load_sources(con, source, vocabulary)
        phase("load csv + vocabulary")
        con.execute(code_map_sql())
        domains = con.execute(
            f"SELECT DISTINCT domain_id FROM code_map WHERE domain_id IN {ROUTED_ELSEWHERE}"
        ).fetchall()
        if domains:
            raise SystemExit(f"codes map to {domains}: routing there is not written in this reference")
        for sql in keyed_tables_sql(today):
            con.execute(sql)
        for sql in events_sql(today):
            con.execute(sql)
        for sql in derived_sql(CANCER_CODES):
            con.execute(sql)
        phase("insert ... select")
        for sql in (condition_era_sql(), drug_era_sql(), dose_era_sql()):
            con.execute(sql)
        phase("eras")
    site = connect(db)
    add_primary_keys(site.engine, TARGETS)
    if indexes:
        create_indexes(site.engine)
    site.execute("CHECKPOINT")
    site.dispose()
    phase("keys + indexes")
    return phases


# Natural form of each compared table: surrogate ids replaced by the source ids they stand for.
PERSON = "(SELECT person_source_value FROM {s}.person p WHERE p.person_id = x.person_id)"
VISIT = "(SELECT visit_source_value FROM {s}.visit_occurrence v WHERE v.visit_occurrence_id = x.visit_occurrence_id)"
NATURAL = {
    "location": "SELECT address_1, city, zip, location_source_value FROM {s}.location x",
    "person": "SELECT * EXCLUDE (person_id, location_id), (SELECT location_source_value FROM {s}.location l "
    "WHERE l.location_id = x.location_id) AS loc FROM {s}.person x",
    "death": f"SELECT * EXCLUDE (person_id), {PERSON} FROM {{s}}.death x",
    "visit_occurrence": f"SELECT * EXCLUDE (visit_occurrence_id, person_id), {PERSON} FROM {{s}}.visit_occurrence x",
    "condition_occurrence": f"SELECT * EXCLUDE (condition_occurrence_id, person_id, visit_occurrence_id), {PERSON}, "
    f"{VISIT} FROM {{s}}.condition_occurrence x",
    "drug_exposure": f"SELECT * EXCLUDE (drug_exposure_id, person_id, visit_occurrence_id), {PERSON}, {VISIT} "
    "FROM {s}.drug_exposure x",
    "procedure_occurrence": f"SELECT * EXCLUDE (procedure_occurrence_id, person_id, visit_occurrence_id), {PERSON}, "
    f"{VISIT} FROM {{s}}.procedure_occurrence x",
    "measurement": f"SELECT * EXCLUDE (measurement_id, person_id, visit_occurrence_id, value_as_number), "
    f"round(value_as_number, 6) AS value, {PERSON}, {VISIT} FROM {{s}}.measurement x",
    "observation_period": f"SELECT * EXCLUDE (observation_period_id, person_id), {PERSON} "
    "FROM {s}.observation_period x",
    "episode": f"SELECT * EXCLUDE (episode_id, person_id), {PERSON} FROM {{s}}.episode x",
    "episode_event": "SELECT c.condition_source_value, c.condition_start_date, c.condition_concept_id, "
    "x.episode_event_field_concept_id, (SELECT person_source_value FROM {s}.person p WHERE p.person_id = c.person_id) "
    "FROM {s}.episode_event x JOIN {s}.condition_occurrence c ON c.condition_occurrence_id = x.event_id",
    "condition_era": f"SELECT * EXCLUDE (condition_era_id, person_id), {PERSON} FROM {{s}}.condition_era x",
    "drug_era": f"SELECT * EXCLUDE (drug_era_id, person_id), {PERSON} FROM {{s}}.drug_era x",
    "dose_era": f"SELECT * EXCLUDE (dose_era_id, person_id), {PERSON} FROM {{s}}.dose_era x",
}


def compare(reference: Path, mapped: Path) -> dict[str, tuple[int, int, int]]:
    """Per table: (rows in the reference, rows only in the reference, rows only in fedomop's database)."""
    found: dict[str, tuple[int, int, int]] = {}
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{reference}' AS ref (READ_ONLY)")
        con.execute(f"ATTACH '{mapped}' AS map (READ_ONLY)")
        for table, natural in NATURAL.items():
            ours, theirs = natural.format(s="ref"), natural.format(s="map")
            rows = con.execute(f"SELECT COUNT(*) FROM ref.{table}").fetchone()
            only_ref = con.execute(f"SELECT COUNT(*) FROM ({ours} EXCEPT ALL {theirs})").fetchone()
            only_map = con.execute(f"SELECT COUNT(*) FROM ({theirs} EXCEPT ALL {ours})").fetchone()
            assert rows and only_ref and only_map
            found[table] = (int(rows[0]), int(only_ref[0]), int(only_map[0]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, help="site A extract folder (CSV files); left out: --check only")
    parser.add_argument("--db", type=Path, required=True, help="DuckDB file to build (replaced)")
    parser.add_argument("--vocabulary", type=Path, default=VOCABULARY)
    parser.add_argument("--check", type=Path, help="a database written by fedomop map from the same extract")
    parser.add_argument("--no-indexes", action="store_true")
    args = parser.parse_args()
    if args.source is not None:
        phases = run(args.source, args.db, args.vocabulary, indexes=not args.no_indexes)
        print("phases s: " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    if args.check:
        differ = 0
        for table, (rows, only_ref, only_map) in compare(args.db, args.check).items():
            print(f"{table:22} {rows:>10,} rows; only in reference {only_ref:,}; only in fedomop map {only_map:,}")
            differ += only_ref + only_map
        print("same OMOP rows" if not differ else f"{differ:,} rows differ")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
