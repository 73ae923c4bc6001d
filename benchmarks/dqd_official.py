"""Compare fedomop's DQD check counts with the official DataQualityDashboard SQL, check instance by check instance.

The official templates are read at run time from a local clone of OHDSI/DataQualityDashboard
(``inst/sql/sql_server/*.sql``; nothing of them is copied into fedomop). Each template is rendered for each
catalogue row the way ``runCheck.R`` does (the row's columns as parameters, field names in upper case, no cohort)
with a minimal SqlRender (``@parameter`` substitution and ``{condition}?{then}:{else}`` blocks) and translated
from SQL Server to DuckDB for the handful of functions the templates use. fedomop's own checks run on the same
DuckDB file; the script prints the instances whose (violated, denominator) differ and writes every pair to a CSV.

    python benchmarks/dqd_official.py --dqd ~/src/DataQualityDashboard [--db x.duckdb | --seeded NAME] [--csv out.csv]

Without ``--db`` the Eunomia CDM in ``$FEDOMOP_SHARED/omop/eunomia-synthea27nj`` is loaded into a temporary file
(``--seeded eunomia`` adds the tests' seeded defects; ``--seeded semantics`` / ``semantics_all`` builds the tiny CDM
of tests/validate/test_dqd_<name>.py instead); run it from the repository root.
docs/validation.md records the result.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.validate.catalogue import CheckType, Row, load_catalogue
from fedomop.harmonize.validate.checks import run_checks
from fedomop.harmonize.vocabulary.cdm_io import load_cdm_folder

TODAY = dt.date(2026, 1, 1)  # the tests' fixed date, so DATEADD(dd,1,GETDATE()) bounds agree run to run


# -- a minimal SqlRender ------------------------------------------------------------------------------------------

_BLOCK = re.compile(r"\{([^{}]*)\}\s*\?\s*\{([^{}]*)\}(?:\s*:\s*\{([^{}]*)\})?", re.S)
_TOKEN = re.compile(r"\s*('[^']*'|\"[^\"]*\"|==|!=|&|\||\(|\)|,|IN\b|[^\s()',&|=!]+)", re.I)


def _condition(text: str) -> bool:
    """Evaluate a SqlRender condition after substitution: string (in)equality, IN lists, & | and parentheses."""
    parts: list[str] = []
    for token in _TOKEN.findall(text):
        upper = token.upper()
        if token in ("==", "!=", "(", ")", ","):
            parts.append(token)
        elif token == "&":
            parts.append(" and ")
        elif token == "|":
            parts.append(" or ")
        elif upper == "IN":
            parts.append(" in ")
        elif upper in ("TRUE", "FALSE"):
            parts.append(repr(upper))
        else:
            parts.append(repr(token.strip("'\"").upper()))
    expression = "".join(parts).replace("'TRUE'", "True").replace("'FALSE'", "False")
    return bool(eval(expression, {"__builtins__": {}}, {}))  # noqa: S307 - tokens above are quoted literals only


def render(template: str, params: dict[str, str]) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", template, flags=re.S)
    for key in sorted(params, key=len, reverse=True):
        sql = sql.replace(f"@{key}", params[key])
    while match := _BLOCK.search(sql):
        chosen = match[2] if _condition(match[1]) else (match[3] or "")
        sql = sql[: match.start()] + chosen + sql[match.end() :]
    return sql


# -- SQL Server -> DuckDB ---------------------------------------------------------------------------------------


def _calls(sql: str, name: str) -> list[tuple[int, int, list[str]]]:
    """(start, end, top-level arguments) of each call of function ``name``, innermost last."""
    found = []
    for match in re.finditer(rf"\b{name}\s*\(", sql, re.I):
        depth, args, start, i = 1, [], match.end(), match.end()
        while depth:
            char = sql[i]
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            elif char == "," and depth == 1:
                args.append(sql[start:i])
                start = i + 1
            i += 1
        args.append(sql[start : i - 1])
        found.append((match.start(), i, [a.strip() for a in args]))
    return found


def _rewrite(sql: str, name: str, build: Callable[[list[str]], str]) -> str:
    while calls := _calls(sql, name):
        start, end, args = calls[-1]
        sql = sql[:start] + build(args) + sql[end:]
    return sql


def translate(sql: str) -> str:
    sql = re.sub(r"\bCOUNT_BIG\s*\(", "COUNT(", sql, flags=re.I)
    sql = re.sub(r"\bGETDATE\s*\(\s*\)", f"DATE '{TODAY.isoformat()}'", sql, flags=re.I)
    sql = re.sub(r"'(\d{4})(\d{2})(\d{2})'", r"'\1-\2-\3'", sql)
    sql = sql.replace("'0' + ", "'0' || ")
    sql = _rewrite(sql, "DATEADD", lambda a: f"(CAST({a[2]} AS DATE) + INTERVAL ({a[1]}) DAY)")
    sql = _rewrite(sql, "ISNUMERIC", lambda a: f"(CASE WHEN TRY_CAST({a[0]} AS DOUBLE) IS NULL THEN 0 ELSE 1 END)")
    sql = _rewrite(sql, "CHARINDEX", lambda a: f"strpos({a[1]}, {a[0]})")
    return re.sub(
        r"CAST\(\s*CONCAT\((.*?)\)\s*AS DATE\)",
        lambda m: f"CAST(strptime(CONCAT({m[1]}), '%Y%m%d') AS DATE)",
        sql,
        flags=re.S | re.I,
    )


# -- the instances ------------------------------------------------------------------------------------------------


def _descriptions(dqd: Path) -> list[Row]:
    path = dqd / "inst" / "csv" / "OMOP_CDMv5.4_Check_Descriptions.csv"
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(handle)]


def our_id(level: str, name: str, row: Row) -> str:
    """fedomop's check_id for a catalogue row (base.CheckInstance.check_id)."""
    parts = [name, row["cdmTableName"].lower()]
    if level in ("FIELD", "CONCEPT"):
        parts.append(row["cdmFieldName"].lower())
    if level == "CONCEPT":
        ids = [p.strip() for p in row["conceptId"].split(",") if p.strip()]
        parts.append(",".join(ids))
        if row.get("unitConceptId"):
            parts.append(row["unitConceptId"])
    return ".".join(parts)


def official_counts(db: Database, dqd: Path) -> dict[str, tuple[int | None, int | None, str]]:
    catalogue = load_catalogue()
    level_rows = {"TABLE": catalogue.table_rows, "FIELD": catalogue.field_rows, "CONCEPT": catalogue.concept_rows}
    out: dict[str, tuple[int | None, int | None, str]] = {}
    for description in _descriptions(dqd):
        level, name = description["checkLevel"].upper(), description["checkName"]
        check = CheckType(name, level, "", "", "", "", "", description["evaluationFilter"])
        template = (dqd / "inst" / "sql" / "sql_server" / description["sqlFile"]).read_text(encoding="utf-8")
        for row in level_rows[level]:
            if not check.applies_to(row):
                continue
            params = {k: v for k, v in row.items()}
            params["cdmFieldName"] = row.get("cdmFieldName", "").upper()
            params |= {"cdmDatabaseSchema": "main", "vocabDatabaseSchema": "main", "schema": "main"}
            params |= {"cohortDatabaseSchema": "main", "cohort": "FALSE", "cohortTableName": "cohort"}
            params["cohortDefinitionId"] = "0"
            sql = translate(render(template, params))
            try:
                (violated, _pct, denominator), *_ = db.query(sql).iter_rows()
                out[our_id(level, name, row)] = (int(violated), int(denominator), "")
            except Exception as exc:  # noqa: BLE001 - DQD records an error result and goes on
                out[our_id(level, name, row)] = (None, None, str(exc).splitlines()[0][:200])
    return out


SEEDED = ("eunomia", "semantics", "semantics_all")


def build_cdm(path: Path, seeded: str | None) -> None:
    """Eunomia (with the seeded defects of tests/validate/seeds.py for ``eunomia``) or a test's tiny CDM."""
    db = connect(path)
    try:
        create_cdm(db.engine, constraints="none")
        if seeded in (None, "eunomia"):
            load_cdm_folder(db, Path(os.environ.get("FEDOMOP_SHARED", "shared")) / "omop" / "eunomia-synthea27nj")
        if seeded == "eunomia":
            from tests.validate.seeds import seed

            seed(db)
        elif seeded:
            module = __import__(f"tests.validate.test_dqd_{seeded}", fromlist=["ROWS"])
            for sql in module.ROWS:
                db.execute(sql)
    finally:
        db.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dqd", type=Path, required=True, help="a clone of OHDSI/DataQualityDashboard")
    parser.add_argument("--db", type=Path, help="a DuckDB OMOP CDM (default: Eunomia loaded from FEDOMOP_SHARED)")
    parser.add_argument("--seeded", choices=SEEDED, help="a seeded-defect CDM of the tests instead of Eunomia")
    parser.add_argument("--csv", type=Path, help="write every instance's counts here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db
        if path is None:
            path = Path(tmp) / "cdm.duckdb"
            build_cdm(path, args.seeded)
        db = connect(path, read_only=True)
        try:
            ours = {r.check_id: r for r in run_checks(db, today=TODAY).results}
            official = official_counts(db, args.dqd)
        finally:
            db.dispose()
    rows, agree = [], 0
    for check_id, (violated, denominator, error) in sorted(official.items()):
        mine = ours.get(check_id)
        counts = (mine.num_violated_rows, mine.num_denominator_rows) if mine else (None, None)
        same = counts == (violated, denominator) or (bool(error) and mine is not None and mine.status != "pass")
        agree += same
        rows.append([check_id, violated, denominator, error, *counts, mine.status if mine else "missing", same])
        if not same:
            print(f"DIFFERENT {check_id}: official {violated}/{denominator} {error} fedomop {counts[0]}/{counts[1]}")
    print(f"{agree} of {len(official)} check instances agree (fedomop ran {len(ours)})")
    for check_id in sorted(set(ours) - set(official)):
        print(f"ONLY FEDOMOP {check_id}: {ours[check_id].num_violated_rows}/{ours[check_id].num_denominator_rows}")
    if args.csv:
        with args.csv.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["check_id", "official_violated", "official_denominator", "official_error"]
                            + ["fedomop_violated", "fedomop_denominator", "fedomop_status", "agree"])  # fmt: skip
            writer.writerows(rows)
    return 0 if agree == len(official) else 1


if __name__ == "__main__":
    sys.exit(main())
