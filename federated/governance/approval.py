"""What a site approves: one (app hash, study digest, requester) triple, checked before any code runs.

Approving an app hash alone let any study of the approved name through (another cohort,
another outcome), and the requester came from run_config. An approval here binds three things:

* ``app_sha256`` - :func:`~fedomop.federated.governance.hashing.app_hash` of the submitted
  app bundle (FAB), computed from the zip's bytes in memory over every entry: nothing is unpacked
  or imported, and a bundle holding compiled code (``.pyc``, ``.so``, ``__pycache__``...) is refused;
* ``study_digest`` - :func:`study_digest` of the whole study except its name, description and
  concept labels: a changed ``max_age``, an added covariate, another ``seed``, ``test_fraction``,
  ``min_outcome_count``, ``allow_absent_covariates``, ``small_cell`` or ``min_cohort_size`` is a
  different study;
* ``requester`` - the name on the researcher's client certificate, which the hub's mTLS gate
  (:mod:`fedomop.federated.governance.gate`) writes into the run's config, overwriting anything
  the researcher sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance.hashing import _digest, zip_entries

REQUESTER_KEY = "requester"


def bundle_hash(content: bytes) -> str:
    """:func:`app_hash` of a FAB given as bytes (the zip is read in memory, never extracted): every entry counts,
    and a bundle holding compiled code is refused (PolicyError), since Flower would import it before the sources."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            entries = zip_entries(archive, "app bundle")
    except zipfile.BadZipFile:
        raise PolicyError("the submitted app is not a zip bundle", where="app bundle", fix="submit a FAB") from None
    return _digest(entries)


def fab_hash(app_dir: object) -> str:
    """:func:`bundle_hash` of the FAB ``flwr run`` builds from ``app_dir`` (flwr rewrites pyproject.toml and
    adds a manifest, so the directory's own hash differs); what a site puts in ``approvals``."""
    from pathlib import Path

    from flwr.cli.build import build_fab_from_disk

    folder = Path(str(app_dir))
    if not (folder / "pyproject.toml").is_file():
        raise PolicyError(f"{folder} is not a Flower app directory", where=str(folder), fix="pass the app's folder")
    return bundle_hash(build_fab_from_disk(folder.resolve()))


DESCRIPTIVE_FIELDS = frozenset({"name", "description"})
"""Study fields that change nothing a site computes or releases, left out of :func:`study_digest` (the name is
matched on its own: an approval sits under ``studies.<name>``); concept ``label``s are left out as well."""


def _without_labels(value: object) -> object:
    if isinstance(value, dict):
        return {key: _without_labels(item) for key, item in value.items() if key != "label"}
    if isinstance(value, list):
        return [_without_labels(item) for item in value]
    return value


def study_digest(study: object) -> str:
    """sha256 of the whole study as the site runs it, canonicalised: every field with its default filled in,
    canonical JSON (sorted keys, no spaces), the descriptive fields (:data:`DESCRIPTIVE_FIELDS`, concept labels)
    left out. The split (``seed``, ``test_fraction``), ``min_outcome_count``, ``allow_absent_covariates`` and the
    study's ``small_cell`` / ``min_cohort_size`` are all in it: each changes what a site computes or releases
    (``test_fraction: 0.85`` had a site train on 18 persons under the approval of the 0.3 split)."""
    from fedomop.federated.study import StudySpec, parse_study

    spec = study if isinstance(study, StudySpec) else parse_study(str(study), source="study sent by the hub")
    core = _without_labels(spec.model_dump(mode="json", exclude=set(DESCRIPTIVE_FIELDS)))
    canonical = json.dumps(core, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"fedomop-study-digest-v2\n" + canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Request:
    """What arrived: the bundle's hash, the study (name and digest) and the authenticated requester."""

    app_sha256: str
    study: str
    study_digest: str
    requester: str


def check_approved(policy: object, request: Request) -> None:
    """Raise PolicyError unless the site's policy holds an approval matching all three parts of ``request``."""
    from fedomop.federated.governance.policy import SitePolicy

    assert isinstance(policy, SitePolicy)
    study = policy.study(request.study)
    triples = {(a.app_sha256, a.study_digest, a.requester) for a in study.approvals}
    if (request.app_sha256, request.study_digest, request.requester) in triples:
        return
    apps = {a.app_sha256 for a in study.approvals}
    if request.app_sha256 not in apps:
        reason = f"app {request.app_sha256[:12]}... is not approved for study {request.study!r}"
    elif request.study_digest not in {a.study_digest for a in study.approvals if a.app_sha256 == request.app_sha256}:
        reason = f"study digest {request.study_digest[:12]}... is not the approved definition of {request.study!r}"
    else:
        reason = f"requester {request.requester!r} is not approved for study {request.study!r} with this app"
    raise PolicyError(
        reason,
        where=f"{policy.source or 'policy'}: studies.{request.study}.approvals",
        fix="the site reviews the bundle and study, then adds {app_sha256, study_digest, requester} to approvals",
    )


ADMITTED: Request | None = None
"""Set by the site executor in its task process once a request is approved; the installed ClientApp
then audits this bundle hash and requester instead of anything the message claims."""


def admitted() -> Request | None:
    return ADMITTED
