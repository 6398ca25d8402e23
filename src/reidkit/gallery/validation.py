"""The rules a crop's metadata and a request's window or age must meet, in one place.

The manifest reader (``reidkit gallery add``), the command line's search and forget, and the
HTTP request models all call these functions, so a row the command line refuses is refused over
HTTP with the same words, and a track id the API could never name cannot be stored. Each
function returns the checked value or raises :class:`ValueError` with the problem alone; the
caller adds where it was (``file:line``, a spec key or a request field).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from reidkit.config.times import TIME_MAX, TIME_MIN, within_clock

#: Cameras are numbered 0..CAMERA_MAX: a site has tens or hundreds, so a larger number is a
#: column mix-up (a timestamp or a track in the camera column), not a camera.
CAMERA_MAX = 1_000_000
#: The longest track id (the API's limit: a longer stored id could never be forgotten over HTTP).
TRACK_ID_MAX = 128
#: The smallest age a forget by age accepts. Retention policies are counted in days; an age
#: under an hour is almost always a slip (``0m``, minutes meant as days) that would erase what
#: was just recorded, and erasing everything has its own explicit request.
MIN_FORGET_AGE = timedelta(hours=1)
#: What a crop's metadata may hold: the manifest's columns and the fields of an HTTP add's
#: metadata entries. A name outside it is a typo (``trackid``) whose value would be lost.
CROP_FIELDS = ("path", "camera", "timestamp", "track_id", "site", "zone")
#: Unicode categories that break a line or control a terminal: control characters (``\n``,
#: ``\r``, ``\t``, escape, NUL...) and the line and paragraph separators.
_CONTROL_CATEGORIES = ("Cc", "Zl", "Zp")


def crop_fields(names: Iterable[str], kind: str) -> None:
    """Refuse names outside :data:`CROP_FIELDS` (``kind`` is what the caller calls them: a
    manifest's ``column``, a request's ``field``): a misspelt name was dropped with its value,
    so crops were stored without their track or site and nothing said so."""
    unknown = [name for name in names if name not in CROP_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown {kind}(s) {', '.join(repr(name) for name in unknown)}; the known "
            f"{kind}s are {', '.join(CROP_FIELDS)}"
        )


def crop_key(value: str) -> str:
    """A crop's key (its ``path``: a file path or a client's own key): not blank, and without a
    line break or other control character.

    A key is shown as one line (operator page, listings, error messages) and typed back to
    forget the crop; a line break in a manifest cell is a quote left open, and a control
    character hides on a terminal what the key names. The manifest reader and the HTTP add
    both call this, so a key one refuses the other refuses too.
    """
    if not value.strip():
        raise ValueError("path is empty")
    return _one_line("path", value)


def _one_line(name: str, value: str) -> str:
    """``value`` without a line break or other control character, else a ValueError naming the
    field ``name``, the character and where it is."""
    for position, char in enumerate(value, start=1):
        if unicodedata.category(char) in _CONTROL_CATEGORIES:
            breaks = len(f"a{char}b".splitlines()) > 1  # str.splitlines' own line breaks
            what = "a line break" if breaks else "a control character"
            raise ValueError(
                f"{name} has {what} ({char!r}) at character {position}; remove it (in a "
                "manifest: a quote left open?)"
            )
    return value


def camera(value: int) -> int:
    """A camera number in 0..:data:`CAMERA_MAX`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"camera {value!r} is not an integer")
    if not 0 <= value <= CAMERA_MAX:
        raise ValueError(f"camera {value} is outside 0..{CAMERA_MAX}")
    return value


def timestamp(seconds: float) -> float:
    """Unix seconds of a crop, finite and within 1970..2200 UTC: earlier or later is a unit
    mistake or a garbled cell, and a crop dated there would never fall in a retention window."""
    try:
        return within_clock(seconds)
    except ValueError as exc:
        raise ValueError(f"timestamp: {exc}") from None


class EmptyTrackId(ValueError):
    """A track id cell left empty: its own type, since a caller that can take crops no
    tracker followed (``adapt``) says how to list them instead."""


def track_id(value: str) -> str:
    """A track id: not empty, not padded with spaces, at most :data:`TRACK_ID_MAX` characters,
    on one line (it is typed back to forget a track, as a crop's key is).

    A manifest row always names its track (an empty cell is a failed join or a shifted column,
    not an untracked crop); over HTTP an untracked crop omits ``track_id`` (null) instead.
    """
    if not value.strip():
        raise EmptyTrackId("track_id is empty; give the tracker's id")
    if value != value.strip():
        raise ValueError(f"track_id {value!r} has leading or trailing spaces")
    if len(value) > TRACK_ID_MAX:
        raise ValueError(f"track_id is {len(value)} characters long; the limit is {TRACK_ID_MAX}")
    return _one_line("track_id", value)


def _shown(seconds: float) -> str:
    if not math.isfinite(seconds) or not TIME_MIN <= seconds < TIME_MAX:
        return f"{seconds}"
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def window(start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """A search's time window (unix seconds, either end open): its start is not after its end."""
    if start is not None and end is not None and start > end:
        raise ValueError(
            f"the time window starts ({_shown(start)}) after it ends ({_shown(end)}); swap start "
            "and end"
        )
    return start, end


def _age_text(age: timedelta) -> str:
    seconds = age.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def forget_age(age: timedelta) -> timedelta:
    """An age for a forget by age: at least :data:`MIN_FORGET_AGE` (see its reason)."""
    if age < MIN_FORGET_AGE:
        raise ValueError(
            f"an age of {_age_text(age)} is under the minimum of {_age_text(MIN_FORGET_AGE)} "
            "(it would erase what was just recorded); to erase everything, ask for it explicitly"
        )
    return age
