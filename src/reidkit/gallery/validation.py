"""The rules a crop's metadata and a request's window or age must meet, in one place.

The manifest reader (``reidkit gallery add``), the command line's search and forget, and the
HTTP request models all call these functions, so a row the command line refuses is refused over
HTTP with the same words, and a track id the API could never name cannot be stored. Each
function returns the checked value or raises :class:`ValueError` with the problem alone; the
caller adds where it was (``file:line``, a spec key or a request field).
"""

from __future__ import annotations

import math
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


def track_id(value: str) -> str:
    """A track id: not empty, not padded with spaces, at most :data:`TRACK_ID_MAX` characters.

    A manifest row always names its track (an empty cell is a failed join or a shifted column,
    not an untracked crop); over HTTP an untracked crop omits ``track_id`` (null) instead.
    """
    if not value.strip():
        raise ValueError("track_id is empty; give the tracker's id")
    if value != value.strip():
        raise ValueError(f"track_id {value!r} has leading or trailing spaces")
    if len(value) > TRACK_ID_MAX:
        raise ValueError(f"track_id is {len(value)} characters long; the limit is {TRACK_ID_MAX}")
    return value


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
