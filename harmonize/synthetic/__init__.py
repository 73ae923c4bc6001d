"""Deterministic multi-site cancer sample-data generator and the real vocabulary subset it codes against.

Public API: :func:`generate_sample_data` (the four sites, streamed), :func:`build_vocabulary_subset`
(the Athena-format subset) and :mod:`fedomop.harmonize.synthetic.model` (the exact outcome formula).
"""

from fedomop.harmonize.synthetic.generator import generate_sample_data
from fedomop.harmonize.synthetic.vocabulary import build_vocabulary_subset, load_catalogue

__all__ = ["build_vocabulary_subset", "generate_sample_data", "load_catalogue"]
