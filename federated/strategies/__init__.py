"""Flower strategies for the PyTorch models, one per file."""
