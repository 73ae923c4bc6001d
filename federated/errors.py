"""The federated stage's own errors, at the bottom of its layers (every federated module may raise them).

They derive from :class:`fedomop.harmonize.ground.errors.FedomopError`, so the CLI prints them like any other
error (message, where, fix; no traceback). They live here, not in harmonize, because a site that only maps and
validates never studies or governs anything.
"""

from __future__ import annotations

from fedomop.harmonize.ground.errors import FedomopError

__all__ = ["FedomopError", "PolicyError", "SettingsError", "StudyError"]


class StudyError(FedomopError):
    """A federated study specification is malformed or cannot be run at a site."""


class PolicyError(FedomopError):
    """A site's governance policy refuses a request."""


class SettingsError(StudyError):
    """A training setting is unknown, of the wrong type or out of its bounds."""
