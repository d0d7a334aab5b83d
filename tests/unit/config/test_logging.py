"""The structlog chain the settings configure."""

from __future__ import annotations

import logging

import structlog


def test_a_line_below_the_level_stops_at_the_first_processor():
    processors = structlog.get_config()["processors"]
    assert processors[0] is structlog.stdlib.filter_by_level
    seen: list[str] = []

    def spy(logger, method, event):
        seen.append(event["event"])
        return event

    root = logging.getLogger()
    level = root.level
    try:
        structlog.configure(processors=[processors[0], spy, *processors[1:]])
        root.setLevel(logging.INFO)
        log = structlog.get_logger("tests.logging.level")
        log.debug("below.the.level")
        log.info("at.the.level")
    finally:
        structlog.configure(processors=processors)
        root.setLevel(level)
    assert seen == ["at.the.level"]


def test_a_line_below_its_loggers_level_builds_nothing(monkeypatch):
    """Dropped before the event dict and the context merge (the wrapper class), also
    through ``log(level, ...)`` and for a logger with its own level (django-structlog's
    ``task_enqueued`` at every task sent from a web request)."""
    from config.logging import LeveledBoundLogger

    assert structlog.get_config()["wrapper_class"] is LeveledBoundLogger
    built: list[str] = []
    real = structlog.stdlib.BoundLogger._proxy_to_logger

    def spy(self, method_name, event=None, *args, **kw):
        built.append(event)
        return real(self, method_name, event, *args, **kw)

    monkeypatch.setattr(structlog.stdlib.BoundLogger, "_proxy_to_logger", spy)
    quiet = logging.getLogger("tests.logging.quiet")
    monkeypatch.setattr(quiet, "level", logging.WARNING)
    quiet.manager._clear_cache()
    log = LeveledBoundLogger(quiet, structlog.get_config()["processors"], {})
    log.info("dropped.info")
    log.log(logging.INFO, "dropped.log")
    log.debug("dropped.debug")
    log.warning("kept.warning")
    log.log(logging.ERROR, "kept.log")
    assert built == ["kept.warning", "kept.log"]
    with structlog.testing.capture_logs() as captured:  # the chain swapped: every line
        log.debug("captured.debug")
    assert [line["event"] for line in captured] == ["captured.debug"]
