"""Wait elements: when the next step is due, for each mode, in the workspace's zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from integrations.engine.waits import WaitConfigError, wait_until

NY = "America/New_York"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_delay_adds_the_seconds():
    now = at("2026-03-02T10:00:00+00:00")
    assert wait_until(config={"mode": "delay", "seconds": 30}, now=now, tz_name="UTC") == (
        now + timedelta(seconds=30)
    )


def test_until_a_wall_clock_time_is_read_in_the_workspace_zone():
    now = at("2026-03-02T10:00:00+00:00")
    due = wait_until(config={"mode": "until", "at": "2026-03-05T09:00"}, now=now, tz_name=NY)
    assert due == at("2026-03-05T14:00:00+00:00")  # 09:00 EST


def test_until_a_past_time_does_not_wait():
    now = at("2026-03-02T10:00:00+00:00")
    due = wait_until(config={"mode": "until", "at": "2026-03-01T09:00Z"}, now=now, tz_name="UTC")
    assert due == now


def test_within_hours_inside_the_window_goes_on_now():
    now = at("2026-03-02T16:00:00+00:00")  # 11:00 in New York
    config = {"mode": "within_hours", "from_hour": 10, "to_hour": 18}
    assert wait_until(config=config, now=now, tz_name=NY) == now


def test_within_hours_before_opening_waits_until_it_opens_today():
    now = at("2026-03-02T12:00:00+00:00")  # 07:00 in New York
    config = {"mode": "within_hours", "from_hour": "10:00", "to_hour": "18:00"}
    assert wait_until(config=config, now=now, tz_name=NY) == at("2026-03-02T15:00:00+00:00")


def test_within_hours_after_closing_crosses_to_the_next_day_in_the_workspace_zone():
    # 02:00 UTC on the 3rd is still 21:00 on the 2nd in New York: the next opening is the
    # 3rd at 10:00 New York time, not the 4th (what a UTC calendar would say).
    now = at("2026-03-03T02:00:00+00:00")
    config = {"mode": "within_hours", "from_hour": 10, "to_hour": 18}
    assert wait_until(config=config, now=now, tz_name=NY) == at("2026-03-03T15:00:00+00:00")


def test_next_working_day_from_a_friday_evening_is_monday_morning():
    now = at("2026-03-06T22:30:00+00:00")  # Friday 17:30 in New York
    config = {"mode": "next_working_day", "from_hour": 9}
    due = wait_until(config=config, now=now, tz_name=NY)
    assert due == at("2026-03-09T13:00:00+00:00")  # Monday 09:00 EDT (DST began on the 8th)
    assert due.astimezone(UTC).weekday() == 0


def test_next_working_day_from_a_tuesday_is_wednesday():
    now = at("2026-03-03T12:00:00+00:00")
    due = wait_until(config={"mode": "next_working_day", "from_hour": 8}, now=now, tz_name="UTC")
    assert due == at("2026-03-04T08:00:00+00:00")


def test_weekday_waits_for_the_next_such_day():
    now = at("2026-03-02T12:00:00+00:00")  # Monday
    due = wait_until(
        config={"mode": "weekday", "weekday": 3, "from_hour": 9}, now=now, tz_name="UTC"
    )
    assert due == at("2026-03-05T09:00:00+00:00")  # Thursday


def test_weekday_that_is_today_but_past_its_hour_waits_a_week():
    now = at("2026-03-05T12:00:00+00:00")  # Thursday noon
    due = wait_until(
        config={"mode": "weekday", "weekday": 3, "from_hour": 9}, now=now, tz_name="UTC"
    )
    assert due == at("2026-03-12T09:00:00+00:00")


@pytest.mark.parametrize(
    "config",
    [
        {"mode": "sometimes"},
        {"mode": "weekday", "weekday": 9},
        {"mode": "until", "at": "soon"},
        {"mode": "within_hours", "from_hour": "ten"},
    ],
)
def test_unreadable_settings_are_refused(config):
    with pytest.raises(WaitConfigError):
        wait_until(config=config, now=at("2026-03-02T12:00:00+00:00"), tz_name="UTC")
