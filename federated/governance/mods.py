"""Flower ClientApp mod that puts the site policy between the hub and the site's data.

``ClientApp(..., mods=[governance_mod()])`` makes every message pass the gate:

1. the site policy is read from the SuperNode's node config (``policy=/path/site.yaml``);
   a site without a policy refuses everything (fail closed);
2. the study named in the run config (``study=<name or path>``) and the hash of the
   running code (study file + the ``federated`` package, see :func:`running_app_hash`)
   must be approved, and the study may only read allowed tables/columns/concepts;
3. the app runs; its reply is checked: no small cell may leave, a ``cohort-size``
   metric below the study minimum is refused, and local DP (if the policy asks for it)
   clips and noises float model updates;
4. every request is audited: refused, blocked, or sent (with sizes and names, never values).

Refusals go back to the hub as Flower error replies, so the server sees which site
refused and why, and the run carries on with the others.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance.enforce import audit, enforce_request, study_name
from fedomop.federated.governance.hashing import app_hash, study_app_hash
from fedomop.federated.governance.policy import DifferentialPrivacy, SitePolicy
from fedomop.federated.governance.suppression import check_outgoing, outgoing_sizes
from fedomop.harmonize.ground.errors import FedomopError

POLICY_KEY = "policy"
STUDY_KEY = "study"
REQUESTER_KEY = "requester"
SITE_RECORD = "fedomop.site"
REFUSED_CODE = 4031  # site policy refused the request
BLOCKED_CODE = 4032  # the reply would have broken the site policy
COHORT_KEYS = ("cohort-size", "cohort_size", "n-persons")

ClientAppCallable = Callable[[Message, Context], Message]


def default_code_dir() -> Path:
    """The ``federated`` package that actually runs here (what a site reviews and approves)."""
    import fedomop.federated

    return Path(next(iter(fedomop.federated.__path__)))


def resolve_study(value: str) -> tuple[Any, Path]:
    """The StudySpec and its file for a run-config ``study`` value (a bundled name or a path)."""
    from fedomop.federated.study import STUDIES_DIR, load_study

    path = Path(value)
    if not path.exists() and not path.suffix:
        path = STUDIES_DIR / f"{value}.yaml"
    return load_study(path), path


def running_app_hash(study_file: Path, code_dir: Path | None = None) -> str:
    """Hash of the study file plus the code that will run it: ``fedomop governance hash --study``."""
    return study_app_hash(study_file, code_dir or default_code_dir())


def _requester(message: Message, context: Context) -> str:
    named = context.run_config.get(REQUESTER_KEY)
    return f"{named or 'hub'} (run {message.metadata.run_id})"


def _error_reply(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)


def _float_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    arrays = {key: array.numpy() for key, array in record.items()}
    return {key: value for key, value in arrays.items() if value.dtype.kind == "f"}


def apply_local_dp(sent: Message, reply: Message, settings: DifferentialPrivacy, seed: int | None = None) -> float:
    """Clip the site's model update to ``clipping_norm`` (L2, all float arrays) and add Gaussian noise.

    Returns the epsilon spent. Refuses (PolicyError) a train reply with no float update
    to protect (e.g. a serialized tree model): the policy asked for DP, so nothing unprotected leaves.
    """
    rng = np.random.default_rng(seed)
    incoming = {name: _float_arrays(rec) for name, rec in sent.content.array_records.items()}
    protected = 0
    for name, record in reply.content.array_records.items():
        local = _float_arrays(record)
        base = incoming.get(name, {})
        updates = {k: v - base[k] for k, v in local.items() if k in base and base[k].shape == v.shape}
        if not updates or len(updates) != len(local):
            continue
        norm = float(np.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in updates.values())))
        scale = min(1.0, settings.clipping_norm / norm) if norm > 0 else 1.0
        for key, update in updates.items():
            noisy = base[key] + update * scale + rng.normal(0.0, settings.noise_sigma, size=update.shape)
            record[key] = Array(noisy.astype(local[key].dtype))
        protected += 1
    if protected == 0:
        raise PolicyError(
            "local differential privacy is required but the reply has no float model update to protect",
            where="site policy: differential_privacy",
            fix="use a model with float parameters (e.g. the MLP) or remove differential_privacy for this study",
        )
    return settings.epsilon


def _cohort_problem(reply: Message, minimum: int) -> str | None:
    for record in reply.content.metric_records.values():
        for key in COHORT_KEYS:
            value = record.get(key)
            if isinstance(value, int | float) and value < minimum:
                return f"cohort below the minimum size {minimum}"
    return None


def _check_reply(sent: Message, reply: Message, policy: SitePolicy, study: str) -> dict[str, Any]:
    """Apply DP and the small-cell / cohort rules to a reply; raise PolicyError to block it."""
    details: dict[str, Any] = {}
    rules = policy.study(study)
    if rules.differential_privacy and sent.metadata.message_type == MessageType.TRAIN:
        details["dp_epsilon"] = apply_local_dp(sent, reply, rules.differential_privacy)
        details["dp_delta"] = rules.differential_privacy.delta
    problem = _cohort_problem(reply, policy.min_cohort(study))
    if problem:
        raise PolicyError(problem, where=f"{policy.source}: studies.{study}.min_cohort_size")
    cells = check_outgoing(reply.content, policy.small_cell(study))
    if cells:
        names = ", ".join(str(cell) for cell in cells[:10])
        raise PolicyError(
            f"{len(cells)} count(s) below the small-cell threshold {policy.small_cell(study)}: {names}",
            where=f"{policy.source}: studies.{study}.small_cell_threshold",
        )
    return details


def governance_mod(code_dir: Path | None = None) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """A ClientApp mod enforcing the site policy on every request and reply (see module docstring)."""

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        requester = _requester(message, context)
        policy_path = context.node_config.get(POLICY_KEY)
        if not policy_path:
            return _error_reply(message, REFUSED_CODE, "this site has no governance policy configured; refused")
        study_value = str(context.run_config.get(STUDY_KEY, ""))
        try:
            study, study_file = resolve_study(study_value)
            name, digest = study_name(study), running_app_hash(study_file, code_dir)
            policy = enforce_request(Path(str(policy_path)), study, digest, requester)
        except FedomopError as error:
            return _error_reply(message, REFUSED_CODE, str(error))
        base = {"requester": requester, "study": name, "app_hash": digest, "action": message.metadata.message_type}
        reply = call_next(message, context)
        if reply.has_error():
            audit(policy, **base, outcome="app-error", sent={}, reason=reply.error.reason or "")
            return reply
        try:
            details = _check_reply(message, reply, policy, name)
        except PolicyError as error:
            audit(policy, **base, outcome="blocked", sent={}, reason=error.message)
            return _error_reply(message, BLOCKED_CODE, f"site {policy.site!r} blocked its reply: {error.message}")
        reply.content[SITE_RECORD] = ConfigRecord({"site": policy.site, **{k: v for k, v in details.items()}})
        audit(
            policy,
            **base,
            outcome="sent",
            sent=outgoing_sizes(reply.content),
            round=message.metadata.group_id,
            **details,
        )
        return reply

    return mod


def code_hash(code_dir: Path | None = None) -> str:
    """Hash of the code alone (``fedomop governance hash <dir>``), for policies that approve code, not studies."""
    return app_hash(code_dir or default_code_dir())
