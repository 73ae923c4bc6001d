"""fedomop: harmonize EHR extracts into OMOP CDM v5.4, validate them, and train federated models on them.

One import root over the design card's top-level folders: ``fedomop.harmonize`` is ``harmonize/`` and
``fedomop.federated`` is ``federated/`` (this thin package links them; the wheel holds real copies).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedomop")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
