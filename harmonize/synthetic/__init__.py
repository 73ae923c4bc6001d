"""Deterministic multi-site cancer sample-data generator and the real vocabulary subset it codes against."""

from harmonize.synthetic.vocabulary import build_vocabulary_subset, load_catalogue

__all__ = ["build_vocabulary_subset", "load_catalogue"]
