"""Wall-clock times as users write them: ISO-8601 text or unix seconds.

One reading for every file reidkit takes a time from (the spec's gallery window, a site's
camera clocks, DeepStream messages): a time without a zone is UTC.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone


def parse_time(text: str) -> float:
    """Unix seconds from ``"1767225600.5"`` or ISO-8601 (``"2026-01-01T08:00:00+01:00"``)."""
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
        return moment.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"time {text!r} is not a finite number")
    return value


def time_as_text(value: object) -> object:
    """A YAML value meant as a time, as text: YAML reads an unquoted ISO-8601 time as a
    datetime and ``1767225600`` as a number (a pydantic ``mode="before"`` validator's body)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return aware.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return value
