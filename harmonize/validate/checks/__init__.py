"""The DQD check catalogue as registered SQL check functions, and the runner.

Importing this package registers the 27 DQD check types; a site registers its own
with :func:`register_check` (see docs/validation.md).
"""

from fedomop.harmonize.validate.checks import concept_checks, field_checks, table_checks, temporal_checks  # noqa: F401
from fedomop.harmonize.validate.checks.base import (
    Absent,
    CheckContext,
    CheckInstance,
    CheckQuery,
    RowPredicate,
    q,
    register_check,
    registered_checks,
    scalar_query,
    unregister_check,
)
from fedomop.harmonize.validate.checks.runner import CheckResult, CheckRun, run_checks

__all__ = [
    "Absent",
    "CheckContext",
    "CheckInstance",
    "CheckQuery",
    "CheckResult",
    "CheckRun",
    "RowPredicate",
    "q",
    "register_check",
    "registered_checks",
    "run_checks",
    "scalar_query",
    "unregister_check",
]
