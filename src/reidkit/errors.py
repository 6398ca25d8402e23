"""User-facing error types and the two helpers every error message is built with.

Every error a user can fix (a bad spec key, a broken dataset, a checkpoint that does not fit)
is raised as a :class:`ReidkitError` subclass with a one-line message that names the file or
key and says what to do. The CLI prints that line and exits with code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ReidkitError(Exception):
    """A problem the user can fix; its message is one line, shown without a traceback."""


class SpecError(ReidkitError):
    """The experiment spec or a command-line override is invalid."""


class DatasetError(ReidkitError):
    """A dataset folder or archive is missing, malformed or inconsistent with the spec."""


class ImageRefused(DatasetError):
    """An image that cannot be used (see :func:`reidkit.data.images.decode_rgb`).

    Its message is ``"<label> <reason>"``; ``reason`` is the same for the same bytes at every
    entry point, only the label (a file path, an upload's position) differs. A plain
    one-argument constructor, so a data-loader worker's copy is re-raised in the main process as
    this type, not as a RuntimeError.
    """

    reason: str = ""


class BatchLargerThanData(DatasetError):
    """A batch size the train set cannot fill once. It belongs to that value, not to the data:
    an AutoML draw of it fails as a trial of its own while the study goes on."""


class CheckpointError(ReidkitError):
    """A checkpoint is missing, unreadable, wrongly encrypted or does not fit the spec."""


class TrainingDivergedError(ReidkitError):
    """Training produced a non-finite or exploding value; the checkpoints on disk predate it."""


class OutOfMemory(ReidkitError):
    """A run needs more memory than the machine has; the message says which settings to lower."""


class ExportError(ReidkitError):
    """An export cannot be written or does not match the PyTorch model."""


def first_line(error: BaseException, limit: int = 500) -> str:
    """The one line of an exception worth showing a user (its type name when it has no text).

    A reidkit error raised inside a data-loader worker arrives wrapped as "Caught X in
    DataLoader worker ... Original Traceback ..."; its own message is the last line, so that
    one is taken instead of the wrapper's first.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    if len(lines) > 1 and last.startswith("reidkit.errors."):
        return last.split(": ", 1)[1][:limit]
    return lines[0][:limit]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""`` when none is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{matches[0]}'?" if matches else ""
