"""User-facing error types.

Every error a user can fix (a bad spec key, a broken dataset, a checkpoint that does not fit)
is raised as a :class:`ReidkitError` subclass with a one-line message that names the file or
key and says what to do. The CLI prints that line and exits with code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class ReidkitError(Exception):
    """A problem the user can fix; its message is one line, shown without a traceback."""


class SpecError(ReidkitError):
    """The experiment spec or a command-line override is invalid."""


class DatasetError(ReidkitError):
    """A dataset folder or archive is missing, malformed or inconsistent with the spec."""


class CheckpointError(ReidkitError):
    """A checkpoint is missing, unreadable, wrongly encrypted or does not fit the spec."""


class ExportError(ReidkitError):
    """An export cannot be written or does not match the PyTorch model."""
