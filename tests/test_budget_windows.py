"""Long token-budget windows (controlplane/quota/windows.py): local midnight in the budget's
zone, calendar months, days of 23 and 25 hours across DST."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controlplane.quota.windows import window


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_month_in_berlin_turns_at_local_midnight_not_a_second_early() -> None:
    last = window(at("2026-11-30T23:59:59+01:00"), "month", "Europe/Berlin")
    first = window(at("2026-12-01T00:00:00+01:00"), "month", "Europe/Berlin")
    assert last.label == "2026-11-01T00:00:00+01:00" and first.label == "2026-12-01T00:00:00+01:00"
    assert last.end == first.start == at("2026-11-30T23:00:00+00:00")
    # 23:30 UTC on the 30th is already December in Berlin, not in UTC.
    assert window(at("2026-11-30T23:30:00+00:00"), "month", "UTC").label == "2026-11-01T00:00:00+00:00"
    assert window(at("2026-11-30T23:30:00+00:00"), "month", "Europe/Berlin") == first


def test_month_holding_a_dst_change_is_an_hour_longer() -> None:
    october = window(at("2026-10-15T12:00:00+00:00"), "month", "Europe/Berlin")
    # Starts at CEST (+02:00), ends at CET (+01:00): 31 days and one hour.
    assert (october.start, october.end) == (at("2026-10-01T00:00:00+02:00"), at("2026-11-01T00:00:00+01:00"))
    assert october.end - october.start == 31 * 86400 + 3600
    assert window(at("2026-12-31T23:59:59+01:00"), "month", "Europe/Berlin").end == at("2027-01-01T00:00:00+01:00")


@pytest.mark.parametrize(("day", "hours"), [("2026-03-29", 23), ("2026-10-25", 25), ("2026-06-01", 24)])
def test_days_across_dst_are_23_or_25_hours(day: str, hours: int) -> None:
    w = window(at(f"{day}T12:00:00+00:00"), "day", "Europe/Berlin")
    assert w.label.startswith(f"{day}T00:00:00") and w.end - w.start == hours * 3600


def test_zone_offsets_east_and_west() -> None:
    instant = at("2026-12-01T03:00:00+00:00")
    assert window(instant, "day", "Asia/Kolkata").label == "2026-12-01T00:00:00+05:30"
    assert window(instant, "day", "America/Los_Angeles").label == "2026-11-30T00:00:00-08:00"
    assert window(instant, "month", "America/Los_Angeles").start == at("2026-11-01T00:00:00-07:00")


def test_a_midnight_that_does_not_exist_starts_the_day_at_the_jump() -> None:
    # America/Santiago moved its clocks from 00:00 to 01:00 on 2026-09-06.
    w = window(at("2026-09-06T12:00:00-03:00"), "day", "America/Santiago")
    previous = window(w.start - 1, "day", "America/Santiago")
    assert previous.end == w.start <= at("2026-09-06T12:00:00-03:00") < w.end
    assert datetime.fromtimestamp(w.start, UTC) == datetime(2026, 9, 6, 4, 0, tzinfo=UTC)
