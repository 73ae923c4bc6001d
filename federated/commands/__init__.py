"""The federated CLI commands (train, hub, site, certs, governance), each exposing ``register(app)``."""
