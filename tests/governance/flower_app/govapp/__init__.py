"""Governance test app."""
