"""The site's gate: every request is checked against the policy and audited, refused or not.

:func:`enforce_request` runs before the ClientApp touches data. It answers with the
loaded :class:`SitePolicy` or raises :class:`~fedomop.federated.errors.PolicyError`; either
way one record goes into the site's audit log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import auditlog as audit_log
from fedomop.federated.governance.policy import SitePolicy, StudyPolicy, load_policy


@dataclass
class DataRequest:
    """What a study asks to read: tables (with columns when known) and concepts (vocabulary, code)."""

    study: str
    tables: dict[str, set[str]] = field(default_factory=dict)
    concepts: set[tuple[str, str]] = field(default_factory=set)

    def add_table(self, table: str, columns: Iterable[str] = ()) -> None:
        self.tables.setdefault(table.lower(), set()).update(c.lower() for c in columns)


def study_name(study: Any) -> str:
    """The study's name from a StudySpec-like object, a dict, or a plain string."""
    if isinstance(study, str):
        return study
    for key in ("name", "id", "study"):
        value = study.get(key) if isinstance(study, Mapping) else getattr(study, key, None)
        if isinstance(value, str) and value:
            return value
    raise PolicyError(
        "the study has no name", where="study spec", fix="give the study a `name:` that the site policy lists"
    )


def _as_plain(study: Any) -> Any:
    if isinstance(study, Mapping | list | str | int | float | type(None)):
        return study
    if hasattr(study, "model_dump"):
        return study.model_dump(mode="json")
    return vars(study)


def _concept(node: Mapping[str, Any]) -> tuple[str, str] | None:
    vocabulary = node.get("vocabulary", node.get("vocabulary_id"))
    code = node.get("code", node.get("concept_code"))
    if isinstance(vocabulary, str) and isinstance(code, str | int) and not isinstance(code, bool):
        return (vocabulary.upper(), str(code))
    return None


def _walk(node: Any, request: DataRequest) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, request)
        return
    if not isinstance(node, Mapping):
        return
    if (concept := _concept(node)) is not None:
        request.concepts.add(concept)
    table = node.get("table")
    if isinstance(table, str):
        columns = node.get("columns", [])
        request.add_table(table, columns if isinstance(columns, list) else [])
    tables = node.get("tables")
    if isinstance(tables, Mapping):
        for name, columns in tables.items():
            request.add_table(name, columns if isinstance(columns, list) else [])
    elif isinstance(tables, list):
        for name in tables:
            if isinstance(name, str):
                request.add_table(name)
    for value in node.values():
        if isinstance(value, Mapping | list):
            _walk(value, request)


def data_request(study: Any) -> DataRequest:
    """What a study reads. A StudySpec may say so itself (``data_request()``); otherwise the spec is walked.

    The walk collects every ``table:`` (with sibling ``columns:``), every ``tables:``
    list or mapping, and every concept given as ``{vocabulary, code}`` anywhere in it.
    """
    name = study_name(study)
    declared = getattr(study, "data_request", None)
    if callable(declared):
        result = declared()
        if isinstance(result, DataRequest):
            return result
        request = DataRequest(name)
        _walk(_as_plain(result), request)
        return request
    request = DataRequest(name)
    _walk(_as_plain(study), request)
    return request


def _outside_policy(request: DataRequest, rules: StudyPolicy) -> list[str]:
    problems = []
    for table, columns in sorted(request.tables.items()):
        if table not in rules.tables:
            problems.append(f"table {table!r} is not allowed (allowed: {', '.join(sorted(rules.tables)) or 'none'})")
            continue
        allowed = rules.allowed_columns(table)
        if allowed is not None and columns - allowed:
            problems.append(
                f"column(s) {', '.join(sorted(columns - allowed))} of {table} are not allowed "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
    approved = rules.allowed_concepts()
    outside = {(vocabulary, code) for vocabulary, code in request.concepts if (vocabulary, code) not in approved}
    outside = {(vocabulary, code) for vocabulary, code in outside if (vocabulary, "*") not in approved}
    if outside:
        problems.append(
            "concept(s) outside the approved concept sets: " + ", ".join(f"{v} {c}" for v, c in sorted(outside))
        )
    return problems


def _refuse(
    policy: SitePolicy, *, requester: str, study: str, app_hash: str, reason: str, fix: str, where: str
) -> PolicyError:
    audit(
        policy,
        requester=requester,
        study=study,
        app_hash=app_hash,
        action="request",
        outcome="refused",
        sent={},
        reason=reason,
    )
    return PolicyError(f"site {policy.site!r} refused study {study!r}: {reason}", where=where, fix=fix)


def enforce_request(
    policy_path: Path | str,
    study: Any,
    app_hash: str,
    requester: str,
    *,
    cohort_size: int | None = None,
) -> SitePolicy:
    """Check a request against the site policy before any data is touched; audit the decision.

    Refuses (PolicyError) an unlisted study, an unapproved app hash, a table, column or
    concept outside the study's policy, and, when ``cohort_size`` is given, a cohort
    below the minimum. Returns the policy so the caller can apply thresholds and DP.
    """
    policy = load_policy(policy_path)
    where = str(policy.source)
    name = study_name(study)
    context = {"requester": requester, "study": name, "app_hash": app_hash}
    if name not in policy.studies:
        raise _refuse(
            policy,
            **context,
            reason="study not listed in the site policy",
            where=f"{where}: studies",
            fix=f"studies allowed here: {', '.join(sorted(policy.studies)) or 'none'}",
        )
    rules = policy.studies[name]
    if not rules.approves(app_hash):
        raise _refuse(
            policy,
            **context,
            reason=f"app hash {app_hash} is not approved",
            where=f"{where}: studies.{name}.approved_apps",
            fix="have the site review the code and add its `fedomop governance hash` to approved_apps",
        )
    problems = _outside_policy(data_request(study), rules)
    if problems:
        raise _refuse(
            policy,
            **context,
            reason="; ".join(problems),
            where=f"{where}: studies.{name}.tables/concept_sets",
            fix="ask the site to extend the policy, or remove those items from the study",
        )
    if cohort_size is not None and cohort_size < policy.min_cohort(name):
        raise _refuse(
            policy,
            **context,
            reason=f"cohort below the minimum size {policy.min_cohort(name)}",
            where=f"{where}: studies.{name}.min_cohort_size",
            fix="the study cannot run at this site with this cohort definition",
        )
    audit(policy, **context, action="request", outcome="accepted", sent={})
    return policy


def enforce_cohort(policy: SitePolicy, study: str, cohort_size: int, *, requester: str, app_hash: str) -> None:
    """Refuse (and audit) a cohort smaller than the study's minimum once the site has counted it."""
    minimum = policy.min_cohort(study)
    if cohort_size < minimum:
        raise _refuse(
            policy,
            requester=requester,
            study=study,
            app_hash=app_hash,
            reason=f"cohort below the minimum size {minimum}",
            where=f"{policy.source}: studies.{study}.min_cohort_size",
            fix="the study cannot run at this site with this cohort definition",
        )


def audit(
    policy: SitePolicy,
    *,
    requester: str,
    study: str,
    app_hash: str,
    action: str,
    outcome: str,
    sent: Mapping[str, int],
    **details: Any,
) -> dict[str, Any]:
    """Append one record to the site's audit log. ``sent`` maps names of what left the site to sizes in bytes."""
    bad = [key for key, size in sent.items() if not isinstance(size, int) or isinstance(size, bool)]
    if bad:
        raise PolicyError(
            f"audit `sent` must map names to byte sizes, got non-integer sizes for {', '.join(bad)}",
            where="fedomop.federated.governance.audit",
            fix="pass sizes in bytes (outgoing_sizes(content)), never the values themselves",
        )
    record = {
        "site": policy.site,
        "requester": requester,
        "study": study,
        "app_hash": app_hash,
        "action": action,
        "outcome": outcome,
        "sent": dict(sorted(sent.items())),
        "bytes_sent": sum(sent.values()),
        **details,
    }
    return audit_log.append(policy.audit_log, record)


def release(
    policy: SitePolicy,
    content: Any,
    *,
    requester: str,
    study: str,
    app_hash: str,
    action: str,
    **details: Any,
) -> dict[str, Any]:
    """The last gate before a reply leaves the site: refuse (and audit) small cells, else audit what is sent.

    ``content`` is the outgoing Flower ``RecordDict``. Raises PolicyError naming the
    offending keys (never their values) when a person count is below the study's
    small-cell threshold; otherwise returns the audit record of the release.
    """
    from fedomop.federated.governance.suppression import check_outgoing, outgoing_sizes

    threshold = policy.small_cell(study)
    cells = check_outgoing(content, threshold)
    context = {"requester": requester, "study": study, "app_hash": app_hash, "action": action}
    if cells:
        names = ", ".join(str(cell) for cell in cells[:10])
        reason = f"{len(cells)} count(s) below the small-cell threshold {threshold}: {names}"
        audit(policy, **context, outcome="blocked", sent={}, reason=reason, **details)
        raise PolicyError(
            f"site {policy.site!r} blocked its reply: {reason}",
            where=f"{policy.source}: studies.{study}.small_cell_threshold",
            fix="suppress or coarsen those counts before sending (fedomop.federated.governance.suppress_counts)",
        )
    return audit(policy, **context, outcome="sent", sent=outgoing_sizes(content), **details)
