"""Checks a hub or a site runs before it starts, so a wrong setup fails in seconds with the path named.

Without them a wrong ``--certs`` folder surfaced as Flower's "--root-certificates does not
point to a file" (no path) or, for histogram XGBoost's TLS allreduce, as a run hanging
until its timeout; a tampered audit log was silently appended to; and a hub restarted on
its saved state failed because every site key was registered again.
"""

from __future__ import annotations

from pathlib import Path

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance.auditlog import require_valid
from fedomop.federated.governance.policy import load_policy

HUB_FILES = ("ca.crt", "server.pem", "server.key")


def site_files(site: str) -> tuple[str, ...]:
    """What a site needs from the ``fedomop certs create`` folder (SuperNode auth and TLS allreduce)."""
    return ("ca.crt", f"{site}.key")


def require_credentials(folder: Path | str, names: tuple[str, ...], *, option: str = "--certs") -> Path:
    """The folder, resolved; PolicyError naming the folder and every missing file otherwise."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise PolicyError(
            f"certificate folder {folder} does not exist",
            where=option,
            fix="pass the folder written by `fedomop certs create --out DIR`",
        )
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise PolicyError(
            f"certificate folder {folder} lacks {', '.join(missing)}",
            where=option,
            fix="pass the folder written by `fedomop certs create` (for a site: the one holding its own key)",
        )
    return folder


def require_untampered_log(policy_path: Path | str) -> None:
    """Refuse to start a site whose audit log's hash chain or head file does not verify, or whose log is missing
    while the state files beside it (lock, cohort / member / DP ledgers) show it had records."""
    from fedomop.federated.governance.auditlog import history_evidence

    policy = load_policy(policy_path)
    if policy.audit_log.exists():
        require_valid(policy.audit_log)
        return
    evidence = history_evidence(policy.audit_log)
    if evidence:
        raise PolicyError(
            f"audit log is missing, but the site's state beside it ({', '.join(p.name for p in evidence)}) shows "
            "it had records: it was deleted",
            where=str(policy.audit_log),
            fix="treat the log as tampered: restore it from a backup, or investigate and archive the state files "
            "before starting a new log",
        )


def register_once(public_key: Path, *, flwr_home: Path, connection: str) -> int | None:
    """Register a site key, or None when a restarted hub already holds it in its saved state.

    Flower answers "Public key already in use" for a key it knows; on a restart on the
    same state that is the expected outcome, not a failure.
    """
    from fedomop.federated.governance.certs import register_supernode

    try:
        return register_supernode(public_key, flwr_home=flwr_home, connection=connection)
    except PolicyError as error:
        if "already in use" in str(error).lower():
            return None
        raise


def published_head(head: str, log: Path | str) -> str:
    """A head hash given directly, or read for this log's site from a result.json / model_card.json."""
    import json
    import re

    from fedomop.federated.governance.auditlog import GENESIS, read

    if head.lower() == GENESIS:
        raise PolicyError(
            "--head is the genesis value, which every audit log starts from: it anchors nothing",
            where="--head",
            fix="pass the head a run published (result.json / model_card.json audit_heads), or its hash",
        )
    if re.fullmatch(r"[0-9a-f]{64}", head.lower()):
        return head.lower()
    source = Path(head)
    if not source.is_file():
        raise PolicyError(
            f"--head {head} is neither a 64-digit hash nor an existing file",
            where="--head",
            fix="pass the hash, or the result.json / model_card.json of a run",
        )
    heads = json.loads(source.read_text(encoding="utf-8")).get("audit_heads") or {}
    sites = {str(record.get("site")) for record in read(log)} & set(heads)
    if len(sites) != 1:
        raise PolicyError(
            f"{source} holds no audit head for the site of {log} (heads for: {', '.join(sorted(heads)) or 'none'})",
            where="--head",
            fix="pass the result of a run this site took part in, or the hash itself",
        )
    return str(heads[sites.pop()]["sha256"])
