"""The run stage: execute a mapping into a site database (pre-flight, build, load, chunked runs, reconciliation).

``run_mapping`` is the library entry point (``fedomop map`` is a thin layer over it); ``plan_run`` is its
pre-flight alone (mapping, files, headers, vocabulary folder, chunk plan), for checking a mapping without a run.
"""

from fedomop.harmonize.run.run import NothingLoadedError, RunPlan, RunReport, plan_run, run_mapping

__all__ = ["NothingLoadedError", "RunPlan", "RunReport", "plan_run", "run_mapping"]
