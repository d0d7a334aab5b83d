"""When a wait element lets the run go on: pure functions of the current time, the
element's settings and the workspace time zone. Nothing sleeps: the next step is a
pending row due at the returned time."""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.utils.dateparse import parse_datetime

MODES = ("delay", "until", "within_hours", "relative", "next_working_day", "weekday")
# relative_to naming the lead's arrival instead of a run variable.
LEAD_CREATED = "lead_created"


class WaitConfigError(ValueError):
    """The wait element's settings cannot be read."""


def _hour(value: Any, default: int) -> time:
    """``9``, ``"9"``, ``"09:30"`` -> a time of day."""
    if value in (None, ""):
        return time(default)
    text = str(value).strip()
    try:
        if ":" in text:
            hours, minutes = text.split(":", 1)
            return time(int(hours), int(minutes))
        return time(int(text))
    except ValueError as exc:
        raise WaitConfigError(f"not an hour: {value!r}") from exc


def _weekday(value: Any) -> int:
    """0 Monday ... 6 Sunday."""
    try:
        weekday = int(value)
    except (TypeError, ValueError) as exc:
        raise WaitConfigError(f"not a weekday (0-6): {value!r}") from exc
    if not 0 <= weekday <= 6:
        raise WaitConfigError(f"not a weekday (0-6): {weekday}")
    return weekday


def _at_local(day: datetime, at: time, tz: zoneinfo.ZoneInfo) -> datetime:
    return datetime.combine(day.date(), at, tzinfo=tz)


def _seconds(config: Mapping[str, Any]) -> float:
    try:
        return float(config.get("seconds") or 0)
    except (TypeError, ValueError) as exc:
        raise WaitConfigError(f"not a number of seconds: {config.get('seconds')!r}") from exc


def _moment(value: Any, tz: zoneinfo.ZoneInfo) -> datetime | None:
    """A time held in a variable: a datetime, an ISO text or Unix seconds."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC)
    else:
        text = str(value or "").strip()
        try:
            return datetime.fromtimestamp(float(text), tz=UTC)
        except ValueError:
            moment = parse_datetime(text)
        if moment is None:
            return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)


def wait_until(
    *,
    config: Mapping[str, Any],
    now: datetime,
    tz_name: str,
    variables: Mapping[str, Any] | None = None,
    lead_created_at: datetime | None = None,
) -> datetime:
    """The time the next step is due (``now`` when there is nothing to wait for).

    ``relative`` waits until ``seconds`` after an event: the time held in the run
    variable named by ``relative_to`` (e.g. captured from an earlier answer), or the
    lead's arrival (``relative_to: lead_created``); a moment already past is ``now``."""
    tz = zoneinfo.ZoneInfo(tz_name or "UTC")
    mode = str(config.get("mode") or "delay")
    local = now.astimezone(tz)
    if mode == "delay":
        return now + timedelta(seconds=max(_seconds(config), 0))
    if mode == "relative":
        name = str(config.get("relative_to") or "").strip()
        if not name:
            raise WaitConfigError("a relative wait needs relative_to (a variable or lead_created)")
        if name == LEAD_CREATED:
            anchor = lead_created_at
            if anchor is None:
                raise WaitConfigError("the run has no lead to wait relative to")
        else:
            raw = (variables or {}).get(name)
            anchor = None if raw in (None, "") else _moment(raw, tz)
            if anchor is None:
                raise WaitConfigError(f"the variable {name!r} holds no date and time: {raw!r}")
        return max(anchor + timedelta(seconds=_seconds(config)), now)
    if mode == "until":
        at = _until_at(config)
        if at.tzinfo is None:  # an operator's wall-clock time, in the workspace's zone
            at = at.replace(tzinfo=tz)
        return max(at, now)
    if mode == "within_hours":
        opens, closes = _hour(config.get("from_hour"), 9), _hour(config.get("to_hour"), 17)
        if opens <= local.time() < closes:
            return now
        opening = _at_local(local, opens, tz)
        if local.time() >= closes:
            opening = _at_local(local + timedelta(days=1), opens, tz)
        return opening.astimezone(UTC)
    if mode == "next_working_day":
        opens = _hour(config.get("from_hour"), 9)
        day = local + timedelta(days=1)
        while day.weekday() >= 5:  # Saturday, Sunday
            day += timedelta(days=1)
        return _at_local(day, opens, tz).astimezone(UTC)
    if mode == "weekday":
        weekday = _weekday(config.get("weekday"))
        opens = _hour(config.get("from_hour"), 0)
        days = (weekday - local.weekday()) % 7
        candidate = _at_local(local + timedelta(days=days), opens, tz)
        if candidate <= local:
            candidate = _at_local(local + timedelta(days=days or 7), opens, tz)
        return candidate.astimezone(UTC)
    raise WaitConfigError(f"unknown wait mode {mode!r}; use one of {', '.join(MODES)}")


# Every setting some mode reads (wait_until); another name is a typo.
SETTINGS = ("mode", "seconds", "at", "relative_to", "from_hour", "to_hour", "weekday")


def wait_config_check(config: Mapping[str, Any]) -> None:
    """Refuse, when the element is saved, settings that ``wait_until`` could not read
    when a run reaches it: each setting its mode reads goes through the same parser,
    and the message names the setting (``weekday: not a weekday (0-6): 12``). Then
    ``wait_until`` itself reads them once, with the time a relative wait needs."""
    unknown = sorted(set(config) - set(SETTINGS))
    if unknown:
        raise WaitConfigError(f"unknown setting {', '.join(unknown)}; use {', '.join(SETTINGS)}")
    mode = str(config.get("mode") or "delay")
    if mode not in MODES:
        raise WaitConfigError(f"mode: unknown wait mode {mode!r}; use one of {', '.join(MODES)}")
    checks: list[tuple[str, Any]] = []
    if mode == "delay":
        if config.get("seconds") in (None, ""):
            # Read as 0 by the engine: a delay that does not wait is a forgotten setting.
            raise WaitConfigError(
                'seconds: a delay needs seconds, e.g. {"mode": "delay", "seconds": 30}'
            )
        checks.append(("seconds", lambda: _seconds(config)))
    elif mode == "relative":
        if not str(config.get("relative_to") or "").strip():
            raise WaitConfigError(
                f"relative_to: a relative wait needs a variable holding a time, or {LEAD_CREATED}"
            )
        checks.append(("seconds", lambda: _seconds(config)))
    elif mode == "until":
        _named("at", lambda: _until_at(config))
    elif mode == "within_hours":
        opens = _named("from_hour", lambda: _hour(config.get("from_hour"), 9))
        closes = _named("to_hour", lambda: _hour(config.get("to_hour"), 17))
        if opens >= closes:
            raise WaitConfigError(
                f"from_hour ({opens:%H:%M}) must be before to_hour ({closes:%H:%M})"
            )
    elif mode == "next_working_day":
        checks.append(("from_hour", lambda: _hour(config.get("from_hour"), 9)))
    elif mode == "weekday":
        checks.append(("weekday", lambda: _weekday(config.get("weekday"))))
        checks.append(("from_hour", lambda: _hour(config.get("from_hour"), 0)))
    for name, check in checks:
        _named(name, check)
    now = datetime.now(UTC)
    anchor = str(config.get("relative_to") or "").strip()
    try:
        wait_until(
            config=config, now=now, tz_name="UTC", variables={anchor: now.isoformat()},
            lead_created_at=now,
        )  # fmt: skip
    except WaitConfigError:
        raise
    except (OverflowError, ValueError) as exc:  # e.g. seconds past the calendar's end
        raise WaitConfigError(f"seconds: out of range: {config.get('seconds')!r}") from exc


def _until_at(config: Mapping[str, Any]) -> datetime:
    """An until wait's moment, as written (naive: the workspace's wall clock)."""
    try:
        at = parse_datetime(str(config.get("at") or ""))
    except ValueError:  # well formed, not a date: "2026-13-45 08:00"
        at = None
    if at is None:
        raise WaitConfigError(
            f'not a date and time: {config.get("at")!r} (e.g. "2026-03-04 08:00")'
        )
    return at


def _named(name: str, check: Any) -> Any:
    try:
        return check()
    except WaitConfigError as exc:
        raise WaitConfigError(f"{name}: {exc}") from exc
