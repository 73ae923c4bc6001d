"""The QA report's check results in the JSON shape the OHDSI Data Quality Dashboard viewer reads.

A site can open ``dqd_results.json`` in the DQD dashboard it already knows (``DataQualityDashboard::viewDqDashboard``
or the static ``inst/shinyApps/www`` page) next to results of the official R package. The shape follows
DataQualityDashboard's ``executeDqChecks.R`` (top level: ``startTimestamp``, ``endTimestamp``, ``executionTime``,
``CheckResults``, ``Metadata``, ``Overview``), ``recordResult.R`` and ``evaluateThresholds.R`` (one object per check
instance) and ``summarizeResults.R`` (the overview); the field names the viewer uses are listed in
``VIEWER_FIELDS``. It is built from the suppressed report, so the same small-cell rule holds: a suppressed count is
the report's label (e.g. ``"<10"``) and its percentage is null.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedomop.harmonize.ground.smallcell import assert_suppressed
from fedomop.harmonize.validate.catalogue import check_semantics

DQD_FILE = "dqd_results.json"

# Fields of one CheckResults object that the viewer reads (inst/shinyApps/www/js/loadResults.js and
# htmlwidgets/lib/dqDashboardComponent.js at DataQualityDashboard commit 2f81ca9e).
VIEWER_FIELDS = (
    "checkId",
    "checkName",
    "checkDescription",
    "checkLevel",
    "cdmTableName",
    "cdmFieldName",
    "conceptId",
    "unitConceptId",
    "numViolatedRows",
    "pctViolatedRows",
    "numDenominatorRows",
    "thresholdValue",
    "notesValue",
    "failed",
    "passed",
    "isError",
    "notApplicable",
    "notApplicableReason",
    "error",
    "queryText",
    "context",
    "category",
    "subcategory",
    "executionTime",
)
# Metadata[0] fields the viewer shows (dqMetadataComponent.js, dqMetadataHeading.js), from cdm_source.
VIEWER_METADATA = (
    "cdmSourceName",
    "sourceDescription",
    "cdmHolder",
    "cdmEtlReference",
    "cdmReleaseDate",
    "cdmVersion",
    "dqdVersion",
)


def sql_files() -> dict[str, str]:
    """check name -> the DQD template it follows (recorded in dqd_check_semantics.csv)."""
    return {name: row["template"].split(" / ")[0] for name, row in check_semantics().items()}


def dqd_check_id(check: dict[str, Any]) -> str:
    """DQD's checkId (getCheckId.R): level, name, table, field, concept, unit; blanks dropped, spaces removed,
    joined by '_', lower case."""
    parts = [check["level"], check["check_name"], check["table"], check["field"], check["concept_id"]]
    parts.append(check["unit_concept_id"])
    texts = [str(p).replace(" ", "") for p in parts if p is not None and str(p).strip()]
    return "_".join(texts).lower()


def _fraction(pct: object) -> float | None:
    return None if pct is None else float(pct) / 100  # type: ignore[arg-type]


def check_result(check: dict[str, Any]) -> dict[str, Any]:
    """One report check row as a DQD CheckResults object."""
    status = str(check["status"])
    reason = check.get("reason") or None
    return {
        "checkId": dqd_check_id(check),
        "checkName": check["check_name"],
        "checkLevel": check["level"],
        "checkDescription": check["description"],
        "cdmTableName": str(check["table"]).upper(),
        "cdmFieldName": str(check["field"]).upper() if check["field"] else None,
        "conceptId": check["concept_id"],
        "unitConceptId": check["unit_concept_id"],
        "numViolatedRows": check["num_violated_rows"],
        "pctViolatedRows": _fraction(check["pct_violated_rows"]),
        "numDenominatorRows": check["num_denominator_rows"],
        "thresholdValue": check["threshold"],
        "notesValue": None,
        "failed": int(status == "fail"),
        "passed": int(status == "pass"),
        "isError": int(status == "error"),
        "notApplicable": int(status == "not_applicable"),
        "notApplicableReason": reason if status == "not_applicable" else None,
        "error": reason if status == "error" else None,
        "warning": None,
        "queryText": check.get("query_text", ""),
        "sqlFile": sql_files().get(str(check["check_name"]), ""),
        "context": check["kahn_context"],
        "category": check["kahn_category"],
        "subcategory": check["kahn_subcategory"],
        "executionTime": "0 secs",  # checks run batched, not one by one: no per-check time
    }


def overview(results: list[dict[str, Any]]) -> dict[str, Any]:
    """DQD's Overview, with summarizeResults.R's definitions (passed = all but failed)."""
    total = len(results)
    failed = sum(r["failed"] for r in results)
    errors = sum(r["isError"] for r in results)
    out: dict[str, Any] = {
        "countTotal": total,
        "countPassed": total - failed,
        "countErrorFailed": errors,
        "countThresholdFailed": sum(r["failed"] for r in results if not r["isError"]),
        "countOverallFailed": failed,
        "percentPassed": round((total - failed) / total * 100, 2) if total else 0,
        "percentFailed": round(failed / total * 100, 2) if total else 0,
    }
    for category in ("Plausibility", "Conformance", "Completeness"):
        mine = [r for r in results if r["category"] == category]
        out[f"countTotal{category}"] = len(mine)
        out[f"countFailed{category}"] = sum(r["failed"] for r in mine)
        out[f"countPassed{category}"] = sum(r["passed"] for r in mine)
    return out


def _metadata(report: dict[str, Any]) -> dict[str, Any]:
    source = dict(report.get("cdm_source") or {})
    return {
        "cdmSourceName": source.get("cdmSourceName") or report["site"],
        "cdmSourceAbbreviation": source.get("cdmSourceAbbreviation"),
        "cdmHolder": source.get("cdmHolder"),
        "sourceDescription": source.get("sourceDescription"),
        "sourceDocumentationReference": source.get("sourceDocumentationReference"),
        "cdmEtlReference": source.get("cdmEtlReference") or f"fedomop {report.get('fedomop_version', '')}".strip(),
        "sourceReleaseDate": source.get("sourceReleaseDate"),
        "cdmReleaseDate": source.get("cdmReleaseDate"),
        "cdmVersion": source.get("cdmVersion") or report.get("cdm_version", "5.4"),
        "vocabularyVersion": source.get("vocabularyVersion"),
        "dqdVersion": f"fedomop {report.get('fedomop_version', '')}".strip(),
    }


def dqd_results(report: dict[str, Any]) -> dict[str, Any]:
    """The DQD results object for a suppressed QA report (``ValidationReport.data``)."""
    results = [check_result(c) for c in report["checks"]]
    seconds = float(report.get("timings", {}).get("checks_seconds", 0.0))
    return {
        "startTimestamp": report["generated_at"],
        "endTimestamp": report["generated_at"],
        "executionTime": f"{seconds:.0f} secs",
        "executionTimeSeconds": seconds,
        "CheckResults": results,
        "Metadata": [_metadata(report)],
        "Overview": overview(results),
    }


def write_dqd_json(report: dict[str, Any], path: Path) -> Path:
    data = dqd_results(report)
    assert_suppressed(data)
    path.write_text(json.dumps(data, indent=1, default=str, allow_nan=False), encoding="utf-8")
    return path
