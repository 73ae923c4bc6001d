"""Validation of an OMOP CDM database: pandera schemas from the spec, the OHDSI DQD checks, QA reports.

Public API (see docs/validation.md): :func:`validate_database` (run everything, write report.html/.json),
:func:`build_report` + :func:`write_report`, :func:`run_checks`, :func:`register_check` (a site's own checks),
:func:`validate_schemas`, :func:`compare_reports`, and :func:`suppress` (the one small-cell gate).
"""

from fedomop.harmonize.ground.smallcell import Count, suppress
from fedomop.harmonize.validate.checks import (
    CheckResult,
    register_check,
    registered_checks,
    run_checks,
    unregister_check,
)
from fedomop.harmonize.validate.compare import compare_reports, write_comparison
from fedomop.harmonize.validate.profile import ProfileOptions
from fedomop.harmonize.validate.report import (
    ValidateOptions,
    ValidationReport,
    build_report,
    load_report,
    validate_database,
    write_report,
)
from fedomop.harmonize.validate.schemas import table_schema, validate_schemas

__all__ = [
    "CheckResult",
    "Count",
    "ProfileOptions",
    "ValidateOptions",
    "ValidationReport",
    "build_report",
    "compare_reports",
    "load_report",
    "register_check",
    "registered_checks",
    "run_checks",
    "suppress",
    "table_schema",
    "unregister_check",
    "validate_database",
    "validate_schemas",
    "write_comparison",
    "write_report",
]
