"""Long token-budget windows: a day or a calendar month in a stated IANA time zone. Pure
arithmetic on Unix times; the clock is the caller's.

A window starts at local midnight (of the month's first day, for a month) in its zone, so a
day is 23 or 25 hours long across a DST change, and a month's length in seconds varies. A
local midnight that does not exist (a zone moving its clocks forward at 00:00) starts the
window when the day does, at the jump.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Per = Literal["day", "month"]


@dataclass(frozen=True)
class Window:
    start: float  # Unix seconds, inclusive
    end: float  # Unix seconds, exclusive
    label: str  # the local start, ISO 8601 with its offset: "2026-12-01T00:00:00+01:00"


def _local_start(local: datetime, per: Per) -> datetime:
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
    return day.replace(day=1) if per == "month" else day


def _next_start(start: datetime, per: Per) -> datetime:
    if per == "day":
        # Calendar arithmetic on the naive local date, not 24 h: days across DST are 23 or 25 h.
        following = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=start.tzinfo)
    else:
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        following = start.replace(year=year, month=month)
    return following


def window(now: float, per: Per, zone: str) -> Window:
    """The window holding the instant `now`."""
    tz = ZoneInfo(zone)
    start = _local_start(datetime.fromtimestamp(now, tz), per)
    end = _next_start(start, per)
    # A start in a gap (fold=0) maps to the jump's instant: the previous window ends there too.
    return Window(start.timestamp(), end.timestamp(), start.isoformat())
