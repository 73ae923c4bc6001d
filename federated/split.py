"""Deterministic, stratified 70/30 person split at each site.

A person's side of the split depends only on ``sha256(seed:person_id)``, so the
same person lands on the same side on every run, on every machine, whatever the
row order; within each outcome class the lowest hashes go to the test set, which
keeps the outcome rate equal on both sides.
"""

from __future__ import annotations

import hashlib

import numpy as np


def person_hash(person_id: int, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{int(person_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def test_mask(person_ids: np.ndarray, labels: np.ndarray, *, seed: int, test_fraction: float = 0.3) -> np.ndarray:
    """Boolean mask of the held-out persons: ``round(test_fraction * n)`` of each outcome class."""
    person_ids = np.asarray(person_ids)
    labels = np.asarray(labels)
    hashes = np.array([person_hash(p, seed) for p in person_ids], dtype=np.uint64)
    mask = np.zeros(len(person_ids), dtype=bool)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        take = int(round(test_fraction * len(members)))
        order = members[np.lexsort((person_ids[members], hashes[members]))]
        mask[order[:take]] = True
    return mask
