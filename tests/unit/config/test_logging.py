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
