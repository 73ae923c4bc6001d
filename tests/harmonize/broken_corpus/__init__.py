"""A corpus of broken and hostile inputs for ``fedomop map`` (issue 17): each entry is the damage done to the
fixture site (files written into the extract, mapping edits, or other arguments), the exit code expected, and
the message or quarantine reason expected. ``tests/harmonize/test_broken_corpus.py`` runs every entry through the
real CLI entry point and asserts that no traceback is ever printed.

Expected values come from the contract (docs/mapping.md, "Exit codes" and "CSV rows"), not from running fedomop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import SAMPLE_DATA

SECRET = "TOP-SECRET-LINE-OUTSIDE-THE-SOURCE"
LAB_HEADER = "lab_id,patient_id,lab_date,loinc,value,unit\n"
LABS_OK = "L1,P1,2019-02-02,17861-6,2.5,mmol/L\nL2,P2,2019-03-02,17861-6,9.1,mg/dL\nL3,P3,2019-04-02,2857-1,4.2,ng/mL\n"
DX_HEADER = "dx_id,patient_id,dx_date,dx_vocab,dx_code\n"
PATIENT_HEADER = "patient_id,sex,birth_date,death_date\n"
PATIENTS_OK = "P1,M,1950-03-04,\nP2,F,1962-11-30,2021-05-06\nP3,M,1971-01-15,\n"


@dataclass
class Case:
    name: str
    code: int
    files: dict[str, bytes | str] = field(default_factory=dict)  # written into the extract (replacing)
    edit: Callable[[dict[str, Any]], None] | None = None  # changes to the mapping dict
    mapping_text: str | None = None  # the mapping file's raw text instead of the fixture's
    db: str | None = None  # --db: "{tmp}" is the test's folder; default {tmp}/site.duckdb
    args: list[str] = field(default_factory=list)  # replace the whole argument list ("{mapping}", "{source}", "{db}")
    setup: Callable[[Path, Path], None] | None = None  # (tmp, source) -> prepare files outside the extract
    message: str = ""  # substring of the whitespace-normalised output
    reason: tuple[str, str] | None = None  # (source, reason substring) expected in fedomop_quarantine
    clean: str | None = None  # a source that must have nothing quarantined
    never: str = SECRET  # text that must never be printed
    absent: str | None = None  # a path ("{tmp}/...") the command must not create


def labs(body: str, header: str = LAB_HEADER) -> dict[str, str]:
    return {"labs.csv": header + body}


def source(name: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(mapping: dict[str, Any]) -> None:
        mapping["sources"][name].update(changes)

    return edit


def top(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(mapping: dict[str, Any]) -> None:
        mapping.update(changes)

    return edit


def vocabulary(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(mapping: dict[str, Any]) -> None:
        mapping["vocabulary"].update(changes)

    return edit


def measurement_value(number: str) -> Callable[[dict[str, Any]], None]:
    def edit(mapping: dict[str, Any]) -> None:
        mapping["tables"]["measurement"][0]["value"] = {"number": number, "unit": "unit"}

    return edit


def fhir_column(column: str, expression: str) -> Callable[[dict[str, Any]], None]:
    def edit(mapping: dict[str, Any]) -> None:
        mapping["sources"]["conditions"]["columns"][column] = expression

    return edit


def outside_file(tmp: Path, source: Path) -> None:
    (tmp / "outside").mkdir(exist_ok=True)
    (tmp / "outside" / "x.csv").write_text(SECRET + "\n")


def symlink_out(tmp: Path, source: Path) -> None:
    outside_file(tmp, source)
    (source / "labs.csv").unlink()
    (source / "labs.csv").symlink_to(tmp / "outside" / "x.csv")


def write_notes(tmp: Path, source: Path) -> None:
    (tmp / "notes.txt").write_text("my notes\n")


def parent_is_file(tmp: Path, source: Path) -> None:
    (tmp / "afile").write_text("x")


def foreign_duckdb(tmp: Path, source: Path) -> None:
    import duckdb

    with duckdb.connect(str(tmp / "theirs.duckdb")) as con:
        con.execute("create table billing (id int)")


def gz_truncated(tmp: Path, source: Path) -> None:
    import gzip

    data = gzip.compress(b"".join((source / "Condition.000.ndjson").read_bytes() for _ in range(50)))
    (source / "Condition.000.ndjson").unlink()
    (source / "Condition.000.ndjson.gz").write_bytes(data[: len(data) // 2])


def outside_include(tmp: Path, source: Path) -> None:
    (tmp / "elsewhere").mkdir(exist_ok=True)
    (tmp / "elsewhere" / "part.yaml").write_text(f"# {SECRET}\nsources: {{}}\n")


def include(path: str) -> Callable[[dict[str, Any]], None]:
    return top(include=[path])


def second_lab_file_without_unit(tmp: Path, source: Path) -> None:
    (source / "labs2.csv").write_text("lab_id,patient_id,lab_date,loinc,value\nL9,P1,2019-02-02,17861-6,2.5\n")


BIG = "9" * 200_000

CASES: list[Case] = [
    # -- CSV rows: wrong width, truncation, blank lines ------------------------------------------------------
    Case("short row", 0, labs(LABS_OK + "L4,P1,2019-05-01,17861-6,2.5\n"), reason=("labs", "wrong number of fields: 5 instead of 6")),
    Case("long row", 0, labs(LABS_OK + "L4,P1,2019-05-01,17861-6,2.5,mg/dL,extra\n"), reason=("labs", "wrong number of fields: 7 instead of 6")),
    Case("truncated last row", 0, labs(LABS_OK + "L4,P1,2019-0"), reason=("labs", "wrong number of fields: 3 instead of 6")),
    Case("truncated patient row", 0, {"patients.csv": PATIENT_HEADER + PATIENTS_OK + "P4,F,19"}, reason=("patients", "wrong number of fields: 3 instead of 4")),
    Case("row cut to one field", 0, labs(LABS_OK + "L4\n"), reason=("labs", "wrong number of fields: 1 instead of 6")),
    Case("unquoted delimiter in value", 0, labs(LABS_OK + "L4,P1,2019-05-01,17861-6,2,5,mg/dL\n"), reason=("labs", "wrong number of fields: 7 instead of 6")),
    Case("blank lines are not records", 0, labs("\n" + LABS_OK.replace("\nL2", "\n\nL2") + "\n\n"), clean="labs"),
    Case("blank lines with CRLF", 0, labs((LABS_OK + "\n").replace("\n", "\r\n"), LAB_HEADER.replace("\n", "\r\n")), clean="labs"),
    Case("only blank lines after header", 0, labs("\n\n\n"), clean="labs"),
    Case("header only", 0, labs(""), clean="labs"),
    Case("empty file", 2, labs("", header=""), message="labs.csv: the file is empty (0 bytes): it has no header line"),
    Case("unterminated quote at end", 0, labs(LABS_OK + 'L4,P1,2019-05-01,17861-6,"2.5'), reason=("labs", "wrong number of fields")),
    Case("200 KB field in ragged row", 0, labs(LABS_OK + f"L4,P1,2019-05-01,17861-6,{BIG},mg/dL,x\n"), reason=("labs", "wrong number of fields: 7 instead of 6")),
    Case("200 KB field in a quoted value", 0, labs(LABS_OK + f'L4,P1,2019-05-01,17861-6,"{BIG}",mg/dL\n'), reason=("labs", "unparseable number")),
    Case("header written a, b, c", 0, labs(LABS_OK, LAB_HEADER.replace(",", ", ")), clean="labs"),
    Case("header names a column twice", 2, labs("L4,P1,2019-05-01,2857-1,4.2,ng/mL,99\n", LAB_HEADER.replace("unit\n", "unit,value\n")), message="labs.csv: the header names column 'value' 2 times"),
    Case("header names a column twice, spaced", 2, labs("L4,P1,2019-05-01,2857-1,4.2,ng/mL,x\n", LAB_HEADER.replace("unit\n", "unit, lab_id\n")), message="column 'lab_id' 2 times"),
    Case("header with BOM", 0, {"labs.csv": ("\ufeff" + LAB_HEADER + LABS_OK).encode()}, clean="labs"),
    Case("semicolon file read as comma", 2, labs(LABS_OK.replace(",", ";"), LAB_HEADER.replace(",", ";")), message="does not exist in source 'labs'"),
    Case("second globbed file lacks a column", 2, edit=source("labs", files="labs*.csv"), setup=second_lab_file_without_unit, message="labs2.csv"),
    # -- control characters and encodings ---------------------------------------------------------------
    Case("NUL byte in a code", 0, labs(LABS_OK + "L4,P1,2019-05-01,1786\x001-6,2.5,mg/dL\n"), reason=("labs", "control character U+0000 in field 'loinc'")),
    Case("control character in a unit", 0, labs(LABS_OK + "L4,P1,2019-05-01,17861-6,2.5,mg\x01dL\n"), reason=("labs", "control character U+0001 in field 'unit'")),
    Case("DEL in an id", 0, labs(LABS_OK + "L\x7f4,P1,2019-05-01,17861-6,2.5,mg/dL\n"), reason=("labs", "control character U+007F in field 'lab_id'")),
    Case("escape sequence in a value", 0, labs(LABS_OK + "L4,P1,2019-05-01,17861-6,\x1b[31m2.5,mg/dL\n"), reason=("labs", "control character U+001B")),
    Case("declared latin-1 but UTF-8", 2, {"patients.csv": PATIENT_HEADER + PATIENTS_OK + "P4,F,1980-01-01,Décédée\n"}, edit=source("patients", encoding="latin-1"), message="declared latin-1 but is valid UTF-8"),
    Case("classic Mac OS CR-only line endings", 2, {"labs.csv": (LAB_HEADER + LABS_OK).replace("\n", "\r")}, message="bare CR"),
    Case("declared cp1252 but UTF-8", 2, {"patients.csv": PATIENT_HEADER + PATIENTS_OK + "P4,F,1980-01-01,Zoë\n"}, edit=source("patients", encoding="cp1252"), message="encoding: utf-8"),
    Case("real latin-1 declared latin-1", 0, {"patients.csv": (PATIENT_HEADER + PATIENTS_OK + "P4,F,1980-01-01,\n").encode("latin-1") + "P5,F,1981-01-01,\n".encode("latin-1")}, edit=source("patients", encoding="latin-1"), clean="patients"),
    Case("latin-1 bytes declared UTF-8", 0, {"labs.csv": (LAB_HEADER + LABS_OK).encode() + "L4,P1,2019-05-01,17861-6,2.5,µg/L\n".encode("latin-1")}, reason=("labs", "encoding error: byte 0xb5")),
    Case("bad UTF-8 line and a multi-line field", 0, {"labs.csv": (LAB_HEADER + LABS_OK).encode() + b'L4,P1,2019-05-01,17861-6,2.5,"mg\ndL"\nL5,P1,2019-05-01,17861-6,\xff2.5,mg/dL\n'}, reason=("labs", "encoding error")),
    Case("header not valid UTF-8", 2, {"labs.csv": b"lab_id,pat\xffient_id,lab_date,loinc,value,unit\n" + LABS_OK.encode()}, message="does not exist in source 'labs'"),
    # -- numbers ------------------------------------------------------------------------------------------
    Case("NaN as a value", 0, labs(LABS_OK + "L4,P1,2019-05-01,2857-1,NaN,ng/mL\n"), reason=("labs", "unparseable number")),
    Case("infinity as a value", 0, labs(LABS_OK + "L4,P1,2019-05-01,2857-1,-Infinity,ng/mL\n"), reason=("labs", "unparseable number")),
    Case("overflow as a value", 0, labs(LABS_OK + "L4,P1,2019-05-01,2857-1,1e999,ng/mL\n"), reason=("labs", "unparseable number")),
    # -- dates --------------------------------------------------------------------------------------------
    Case("event in 2099", 0, {"diagnoses.csv": DX_HEADER + "D1,P1,2099-01-01,ICD10CM,C61\n"}, reason=("diagnoses", "implausible date: after")),
    Case("lab in 2999", 0, labs(LABS_OK + "L4,P1,2999-01-01,17861-6,2.5,mg/dL\n"), reason=("labs", "implausible date: after")),
    Case("event on 0001-01-01", 0, {"diagnoses.csv": DX_HEADER + "D1,P1,0001-01-01,ICD10CM,C61\n"}, reason=("diagnoses", "implausible date: before 1900-01-01")),
    Case("event in 1899", 0, {"diagnoses.csv": DX_HEADER + "D1,P1,1899-12-31,ICD10CM,C61\n"}, reason=("diagnoses", "implausible date: before 1900-01-01")),
    Case("birth in 1800", 0, {"patients.csv": PATIENT_HEADER + PATIENTS_OK + "P4,F,1800-01-01,\n"}, reason=("patients", "implausible date: before 1850-01-01")),
    Case("birth in 1860 is plausible", 0, {"patients.csv": PATIENT_HEADER + PATIENTS_OK + "P4,F,1860-01-01,\n"}, clean="patients"),
    Case("birth in the future", 0, {"patients.csv": PATIENT_HEADER + PATIENTS_OK + "P4,F,2150-01-01,\n"}, reason=("patients", "implausible date: after")),
    Case("death in 2099", 0, {"patients.csv": PATIENT_HEADER + PATIENTS_OK + "P4,F,1980-01-01,2099-12-31\n"}, reason=("patients", "implausible date: after")),
    Case("column bound from the mapping", 0, edit=top(date_bounds={"columns": {"dx_date": {"earliest": "2019-03-01"}}}), reason=("diagnoses", "implausible date: before 2019-03-01")),
    Case("birth bound from the mapping", 0, edit=top(date_bounds={"birth_earliest": "1960-01-01"}), reason=("patients", "implausible date: before 1960-01-01")),
    Case("negative future margin", 2, edit=top(date_bounds={"future_margin_days": -1}), message="future_margin_days"),
    Case("events of a person refused for a date", 0, {"patients.csv": PATIENT_HEADER + PATIENTS_OK + "P4,F,1800-01-01,\n"} | labs(LABS_OK + "L4,P4,2019-05-01,17861-6,2.5,mg/dL\n"), reason=("labs", "person quarantined: implausible date: before 1850-01-01 (birth_date)")),
    Case("events of a person refused for a bad date", 0, {"patients.csv": PATIENT_HEADER + PATIENTS_OK + "P4,F,1980-02-31,\n"} | labs(LABS_OK + "L4,P4,2019-05-01,17861-6,2.5,mg/dL\n"), reason=("labs", "person quarantined: bad date")),
    Case("events of a person nobody knows", 0, labs(LABS_OK + "L4,P9,2019-05-01,17861-6,2.5,mg/dL\n"), reason=("labs", "unknown person")),
    Case("month 13", 0, {"diagnoses.csv": DX_HEADER + "D1,P1,2019-13-45,ICD10CM,C61\n"}, reason=("diagnoses", "bad date")),
    # -- the mapping --------------------------------------------------------------------------------------
    Case("table key written twice", 2, mapping_text="site: x\ntables:\n  measurement: []\n  measurement: []\n", message="key 'measurement' is written twice"),
    Case("source key written twice", 2, mapping_text="site: x\nsources:\n  labs: {format: csv, files: a.csv}\n  labs: {format: csv, files: b.csv}\n", message="line 4"),
    Case("top-level key written twice", 2, mapping_text="site: x\nsite: y\n", message="key 'site' is written twice"),
    Case("not YAML", 2, mapping_text="site: [x\n", message="not valid YAML"),
    Case("a YAML list", 2, mapping_text="- a\n- b\n", message="must be a YAML mapping"),
    Case("mapping not UTF-8", 2, mapping_text="site: caf\udce9\n", message="not UTF-8"),
    Case("unknown key", 2, edit=top(tabels={}), message="unknown key 'tabels'"),
    Case("FHIRPath typo: unclosed call", 2, edit=fhir_column("code", "code.coding.where(system = 'x'"), message="fixture.yaml: sources.conditions.columns.code: FHIR path expression"),
    Case("FHIRPath typo: misspelt function", 2, edit=fhir_column("patient", "subject.reference.reslove_id()"), message="fixture.yaml: sources.conditions.columns.patient: FHIR path expression 'subject.reference.reslove_id()'"),
    Case("FHIRPath typo: unknown element", 2, edit=fhir_column("code", "code.codding.code"), message="fixture.yaml: sources.conditions.columns.code"),
    Case("FHIR resource type misspelt", 2, edit=source("conditions", resource_type="Conditoin"), message="fixture.yaml: sources.conditions.resource_type: 'Conditoin' is not a FHIR R4B resource type"),
    Case("missing mapping file", 2, args=["map", "--mapping", "{tmp}/absent.yaml", "--source", "{source}", "--db", "{db}"], message="mapping file not found"),
    # -- path escapes -------------------------------------------------------------------------------------
    Case("files: ../../etc/passwd", 2, edit=source("labs", files="../../etc/passwd"), message="steps out of the source folder", never="root:"),
    Case("files: /etc/passwd", 2, edit=source("labs", files="/etc/passwd"), message="is an absolute path", never="root:"),
    Case("files: ../outside/x.csv", 2, edit=source("labs", files="../outside/x.csv"), setup=outside_file, message="steps out"),
    Case("symlink out of the source", 2, setup=symlink_out, message="links to a file outside the source folder"),
    Case("source_to_concept_map: ../../etc/passwd", 2, edit=vocabulary(source_to_concept_map="../../etc/passwd"), message="steps out", never="root:"),
    Case("source_to_concept_map: /etc/passwd", 2, edit=vocabulary(source_to_concept_map="/etc/passwd"), message="absolute path", never="root:"),
    Case("include outside the mapping's folder", 2, edit=include("elsewhere/../../elsewhere/part.yaml"), setup=outside_include, message="outside the mapping's folder"),
    # -- rich markup in error text ------------------------------------------------------------------------
    Case("markup [/x] in a column name", 2, edit=measurement_value("[/x]"), message="column '[/x]' does not exist"),
    Case("markup [bold] in a file pattern", 2, edit=source("labs", files="[bold]x[/bold].csv", required=True), message="[bold]x[/bold].csv"),
    # -- --db ----------------------------------------------------------------------------------------------
    Case("--db is a text file", 2, db="{tmp}/notes.txt", setup=write_notes, message="not a DuckDB database"),
    Case("--db parent is a file", 2, db="{tmp}/afile/site.duckdb", setup=parent_is_file, message="is a file, not a folder"),
    Case("--db is a folder", 2, db="{tmp}", message="names a folder"),
    Case("--db in folders that do not exist yet", 0, db="{tmp}/new/deeper/site.duckdb", clean="labs"),
    # a command that writes a database creates the named file's folder; one that reads it never creates it
    Case("cdm create in a folder that does not exist yet", 0, args=["cdm", "create", "--db", "{tmp}/new/cdm.duckdb"], message="created"),
    Case("vocab resolve on a missing --db", 2, args=["vocab", "resolve", "--db", "{tmp}/absent/x.duckdb", "--vocabulary", "ICD10CM", "--code", "C61"], message="database file not found", absent="{tmp}/absent"),
    Case("vocab load-stcm on a missing --db", 2, args=["vocab", "load-stcm", "--db", "{tmp}/absent.duckdb", "--path", "{source}/labs.csv"], message="database file not found", absent="{tmp}/absent.duckdb"),
    Case("codes review on a missing --db", 2, args=["codes", "review", "--mapping", "{mapping}", "--db", "{tmp}/absent/x.duckdb", "--out", "{tmp}/review.csv"], message="no such database", absent="{tmp}/absent"),
    Case("validate on a missing --db", 2, args=["validate", "--db", "{tmp}/absent/x.duckdb", "--out", "{tmp}/qa"], message="database file not found", absent="{tmp}/absent"),
    Case("--db is another tool's DuckDB", 2, db="{tmp}/theirs.duckdb", setup=foreign_duckdb, message="fedomop did not create"),
    Case("--db PostgreSQL unreachable", 2, db="postgresql+psycopg://nobody@127.0.0.1:9/site?connect_timeout=2", message="cannot reach the database"),
    Case("--db unsupported backend", 2, db="sqlite:///{tmp}/x.db", message="not a site database backend"),
    # -- FHIR NDJSON --------------------------------------------------------------------------------------
    Case("truncated JSON line", 0, {"Condition.000.ndjson": '{"resourceType": "Condition", "id": "c3", "subject": {"refer\n'}, reason=("conditions", "invalid JSON")),
    Case("truncated .ndjson.gz", 2, edit=source("conditions", files="Condition*.ndjson*"), setup=gz_truncated, message="Condition.000.ndjson.gz"),
    Case("binary garbage as NDJSON", 0, {"Condition.000.ndjson": b"\x89PNG\r\n\x1a\n\x00\x00"}, reason=("conditions", "")),
    Case("cdm create on a text file", 2, args=["cdm", "create", "--db", "{tmp}/notes.txt"], setup=write_notes, message="not a DuckDB database (fedomop leaves it untouched)"),
    Case("vocab load on a text file", 2, args=["vocab", "load", "--db", "{tmp}/notes.txt", "--folder", str(SAMPLE_DATA / "vocabulary")], setup=write_notes, message="not a valid DuckDB database file"),
    # -- other commands: a path that cannot be used is bad input (2) naming it, not an internal error ---------
    Case("certs create under a file", 2, args=["certs", "create", "--out", "{source}/labs.csv/pki", "--site", "a"], message="labs.csv/pki"),
    Case("verify-log given a folder", 2, args=["governance", "verify-log", "{source}"], message="Is a directory"),
    # -- every command: bad input is exit 2 with a message, never a traceback (cheap: in-process) -----------
    Case("profile: source folder missing", 2, args=["profile", "--source", "{tmp}/nope", "--out", "{tmp}/p"], message="not a folder"),
    Case("draft-mapping: profile missing", 2, args=["draft-mapping", "--profile", "{tmp}/nope.json", "--out", "{tmp}/m.yaml", "--vocabulary", "{tmp}"], message="nope.json"),
    Case("mapping doc: mapping missing", 2, args=["mapping", "doc", "--mapping", "{tmp}/absent.yaml", "--out", "{tmp}/d.md"], message="mapping file not found"),
    Case("import-cdm: folder missing", 2, args=["import-cdm", "--db", "{tmp}/x.duckdb", "--folder", "{tmp}/nope"], message="not a folder"),
    Case("codes apply: review sheet missing", 2, args=["codes", "apply", "--review", "{tmp}/nope.csv", "--mapping", "{mapping}", "--source", "{source}"], message="nope.csv"),
    Case("train: site database missing", 2, args=["train", "--sites", "{tmp}/nope.duckdb", "--out", "{tmp}/fed"], message="site database(s) not found"),
    Case("governance hash: app missing", 2, args=["governance", "hash", "{tmp}/nope"], message="cannot hash"),
    Case("governance study-digest: study unknown", 2, args=["governance", "study-digest", "no_such_study"], message="study file not found"),
    Case("governance check-policy: policy missing", 2, args=["governance", "check-policy", "{tmp}/nope.yaml"], message="site policy file not found"),
    Case("certs issue: no CA", 2, args=["certs", "issue", "--certs", "{tmp}/nope", "--name", "ann", "--role", "researcher"], message="nope"),
    Case("site start: no policy", 2, args=["site", "start", "--db", "{tmp}/x.duckdb"], message="needs --policy"),
    Case("hub start: wildcard host", 2, args=["hub", "start", "--host", "0.0.0.0"], message="0.0.0.0"),
    Case("hub connect: certificate missing", 2, args=["hub", "connect", "--gate", "127.0.0.1:9", "--cert", "{tmp}/a.pem", "--key", "{tmp}/a.key", "--ca", "{tmp}/ca.crt"], message="a.pem"),
    Case("demo: unknown option", 2, args=["demo", "--bogus"], message="No such option"),
    # -- usage --------------------------------------------------------------------------------------------
    Case("source folder missing", 2, args=["map", "--mapping", "{mapping}", "--source", "{tmp}/nope", "--db", "{db}"], message="nope"),
    Case("chunks 0", 2, args=["map", "--mapping", "{mapping}", "--source", "{source}", "--db", "{db}", "--chunks", "0"], message="--chunks"),
    Case("unknown option", 2, args=["map", "--mapping", "{mapping}", "--bogus"], message="No such option"),
]  # fmt: skip
