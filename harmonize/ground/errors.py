"""Typed errors that say *where* the problem is and *how* to fix it.

Every error a user can trigger derives from :class:`FedomopError`. The CLI prints
``str(error)`` without a traceback, so the message must stand on its own.
"""

from __future__ import annotations


class FedomopError(Exception):
    """Base class: a message, the place it happened, and the fix."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.__str__())

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled with where and fix (an error raised in a worker process reaches the run whole)."""
        return (_rebuild, (type(self), self.message, self.where, self.fix), self.__dict__)

    def __str__(self) -> str:
        parts = [f"{self.where}: {self.message}" if self.where else self.message]
        if self.fix:
            parts.append(f"  fix: {self.fix}")
        return "\n".join(parts)


def _rebuild(kind: type[FedomopError], message: str, where: str | None, fix: str | None) -> FedomopError:
    return kind(message, where=where, fix=fix)


class SchemaError(FedomopError):
    """The OMOP CDM specification or a database schema does not match what is expected."""


class DatabaseError(FedomopError):
    """A database URL cannot be opened or a load into it failed."""


class VocabularyError(FedomopError):
    """A vocabulary file is missing, malformed, or a concept cannot be resolved."""


class MappingError(FedomopError):
    """A mapping YAML file is malformed or refers to something that does not exist."""


class SourceError(FedomopError):
    """A source extract (CSV, Parquet, FHIR) cannot be read as declared."""


class ReconciliationError(FedomopError):
    """Source counts do not equal loaded + quarantined counts."""


class ValidationError(FedomopError):
    """A table failed schema or data-quality validation in a way that stops the run."""
