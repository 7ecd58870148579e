"""Errors a user can cause. Each message says what was wrong and what to do.

The GUI shows them in a dialog or the status line; the CLI prints one line and
exits non-zero. Anything that is not a `DiffusionStudioError` is a bug.
"""

from __future__ import annotations


class DiffusionStudioError(Exception):
    """Base class of every error a user can cause."""


class ConfigError(DiffusionStudioError, ValueError):
    """An invalid setting (schedule, sampler, model, training)."""


class ImageLoadError(DiffusionStudioError):
    """An image file that cannot be read or used."""


class DataError(DiffusionStudioError):
    """A data source that cannot be used (empty folder, unknown data set, ...)."""


class CheckpointError(DiffusionStudioError):
    """A checkpoint file that is missing, corrupt, of the wrong kind or unsafe."""


class TrainingError(DiffusionStudioError):
    """Training stopped because it cannot go on (NaN loss, out of memory, ...)."""


class ExportError(DiffusionStudioError):
    """An export that could not be written."""
