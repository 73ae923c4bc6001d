"""Federated models, one per file."""
