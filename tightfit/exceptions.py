"""The errors tightfit raises on purpose.

Every user mistake (config, profile, model, data, work directory) is a :class:`TightfitError`
whose message names the file, field or object and the fix; the CLI prints it as one line.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CandidateError",
    "ConfigError",
    "DataError",
    "ModelError",
    "TightfitError",
    "WorkdirError",
]


class TightfitError(Exception):
    """Base class of the errors that are the user's to fix."""


class ConfigError(TightfitError):
    """A search config or hardware profile is invalid (names the field and the fix)."""


class ModelError(TightfitError):
    """The model callable failed, returned the wrong type, or the model cannot be exported."""


class DataError(TightfitError):
    """The data callable failed or returned data of the wrong type or shape."""


class WorkdirError(TightfitError):
    """The work directory is unusable (unwritable, or belongs to another search)."""


class CandidateError(TightfitError):
    """A candidate cannot be applied to the model; it fails its trial, never the study."""


class SearchAborted(TightfitError):
    """The search stopped itself: its first trials all failed for the same reason."""
