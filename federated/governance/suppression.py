"""Small-cell checks for everything that leaves a site.

The rule itself lives in :mod:`fedomop.harmonize.ground.smallcell` (one implementation for the QA report,
the site comparison and federated replies); a machine reply shows a withheld cell as ``None``. Here:

* :func:`suppress_counts`: the rule on a reply's counts (``None`` for a withheld cell; with ``group``,
  complementary suppression of the parts of a released total);
* an aggregate (mean, histogram, model update) computed over fewer than
  ``threshold`` persons is refused outright (:func:`require_min_persons`).

:func:`check_outgoing` scans a Flower reply (a ``RecordDict``) before it is sent.
A value is treated as a person count when its key names one: a token of the key
(split on ``.``, ``-``, ``_`` or ``/``) is one of :data:`COUNT_TOKENS`, e.g.
``num-examples``, ``n``, ``n_persons``, ``outcome.count``. Apps name counts that way
(or pass ``count_keys``) so the checker can see them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedomop.federated.errors import PolicyError
from fedomop.harmonize.ground import smallcell
from fedomop.harmonize.ground.smallcell import is_small

COUNT_TOKENS = frozenset(
    {"n", "count", "counts", "num", "persons", "patients", "cases", "events", "examples", "cohort"}
)
_TOKEN_SPLIT = re.compile(r"[._\-/ ]+")


def is_count_key(key: str) -> bool:
    """Whether a record key names a person count (see :data:`COUNT_TOKENS`)."""
    return any(token in COUNT_TOKENS for token in _TOKEN_SPLIT.split(key.lower()))


def suppress_counts(counts: Mapping[str, int], threshold: int, *, group: str | None = None) -> dict[str, int | None]:
    """The counts with every withheld cell as ``None`` (the machine rendering of the one small-cell rule)."""
    return {
        key: None if value is None else int(value)
        for key, value in smallcell.suppress_counts(counts, threshold, render="none", group=group).items()
    }


def require_min_persons(n_persons: int, threshold: int, *, what: str, where: str | None = None) -> None:
    """Refuse to release an aggregate computed over fewer than ``threshold`` persons."""
    if n_persons < threshold:
        raise PolicyError(
            f"{what} would be computed over fewer than {threshold} persons; refused (small cell)",
            where=where,
            fix=f"widen the cohort or the stratum so at least {threshold} persons contribute",
        )


@dataclass(frozen=True)
class SmallCell:
    """One offending value in an outgoing message (the value itself stays at the site)."""

    record: str
    key: str
    index: int | None = None

    def __str__(self) -> str:
        position = f"[{self.index}]" if self.index is not None else ""
        return f"{self.record}.{self.key}{position}"


def _scalars(value: Any) -> Iterable[tuple[int | None, float]]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [(None, value)]
    if isinstance(value, list):
        return [(i, v) for i, v in enumerate(value) if isinstance(v, int | float) and not isinstance(v, bool)]
    return []


def check_outgoing(message_content: Any, threshold: int, *, count_keys: Collection[str] = ()) -> list[SmallCell]:
    """Every person count in an outgoing ``RecordDict`` that is a small cell (empty list: clean)."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    found: list[SmallCell] = []
    for record_name, record in message_content.items():
        for key, value in record.items():
            if not (key in count_keys or is_count_key(key) or is_count_key(record_name)):
                continue
            if isinstance(record, ArrayRecord):
                flat = np.asarray(value.numpy()).ravel()
                if flat.dtype.kind in "iuf":
                    small = np.nonzero((flat > 0) & (flat < threshold))[0]
                    found += [SmallCell(record_name, key, int(i) if flat.size > 1 else None) for i in small]
            elif isinstance(record, MetricRecord | ConfigRecord):
                found += [SmallCell(record_name, key, i) for i, v in _scalars(value) if is_small(v, threshold)]
    return found


def assert_no_small_cells(message_content: Any, threshold: int, *, where: str | None = None) -> None:
    """Raise a PolicyError naming (never showing) each small cell in an outgoing message."""
    cells = check_outgoing(message_content, threshold)
    if cells:
        names = ", ".join(str(cell) for cell in cells[:10])
        raise PolicyError(
            f"reply holds {len(cells)} count(s) below the small-cell threshold {threshold}: {names}; not sent",
            where=where,
            fix="suppress or coarsen those counts at the site before sending (fedomop.federated.governance.suppress_counts)",
        )


def outgoing_sizes(message_content: Any) -> dict[str, int]:
    """Bytes per ``record.key`` in a RecordDict: what the audit log records about a reply (no values)."""
    from flwr.app import ArrayRecord

    sizes: dict[str, int] = {}
    for record_name, record in message_content.items():
        for key, value in record.items():
            if isinstance(record, ArrayRecord):
                size = len(value.data)
            elif isinstance(value, bytes | str):
                size = len(value)
            elif isinstance(value, list):
                size = sum(len(v) if isinstance(v, bytes | str) else 8 for v in value)
            else:
                size = 8
            sizes[f"{record_name}.{key}"] = size
    return sizes
