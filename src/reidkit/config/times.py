"""Wall-clock times as users write them: ISO-8601 text or unix seconds.

One reading for every file reidkit takes a time from (the spec's gallery window, a site's
camera clocks, DeepStream messages): a time without a zone is UTC.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timezone

#: Times lie in 1970..2200 UTC: earlier or later is a unit mistake (milliseconds as seconds)
#: or a garbled value, and a time out there cannot even be written back as a date.
TIME_MIN = 0.0
TIME_MAX = datetime(2200, 1, 1, tzinfo=timezone.utc).timestamp()


def within_clock(seconds: float) -> float:
    """``seconds`` when it is a finite time in 1970..2200 UTC, else ``ValueError`` saying why."""
    if not math.isfinite(seconds):
        raise ValueError(f"time {seconds} is not a finite number")
    if not TIME_MIN <= seconds < TIME_MAX:
        raise ValueError(
            f"time {seconds:.15g} is outside 1970..2200 (unix seconds, not milliseconds)"
        )
    return seconds


def parse_time(text: str) -> float:
    """Unix seconds from ``"1767225600.5"`` or ISO-8601 (``"2026-01-01T08:00:00+01:00"``),
    within 1970..2200 (:func:`within_clock`)."""
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"time {text!r} is neither unix seconds nor ISO-8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return within_clock(moment.timestamp())
    if not math.isfinite(value):
        raise ValueError(f"time {text!r} is not a finite number")
    return within_clock(value)


def time_as_text(value: object) -> object:
    """A YAML value meant as a time, as text: YAML reads an unquoted ISO-8601 time as a
    datetime, an unquoted ``2026-03-02`` as a date (its midnight, UTC) and ``1767225600`` as
    a number (a pydantic ``mode="before"`` validator's body)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return aware.isoformat()
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=timezone.utc).isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return value
