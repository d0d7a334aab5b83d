"""Structured logging: every line is key=value (console) or JSON, with request_id and,
where a lead is involved, ``lead_id`` bound as the correlation id."""

from typing import Any

import structlog


class LeveledBoundLogger(structlog.stdlib.BoundLogger):
    """structlog's stdlib logger that drops a line below its logger's level before
    anything else: no event dict, no context merge, no processor chain (the
    ``filter_by_level`` processor did the same after building them: ~15 us a dropped
    line, as for django-structlog's ``task_enqueued`` at every task sent from a web
    request, bench-callbacks). Only while the chain starts with that processor, which
    would drop the line anyway: ``structlog.testing.capture_logs`` swaps the chain (the
    same list, in place) and then sees every line. A method name that is not a level
    goes on as before."""

    def _proxy_to_logger(
        self, method_name: str, event: str | None = None, *event_args: str, **event_kw: Any
    ) -> Any:
        level = structlog.stdlib.NAME_TO_LEVEL.get(method_name)
        if (
            level is not None
            and self._processors
            and self._processors[0] is structlog.stdlib.filter_by_level
            and not self._logger.isEnabledFor(level)
        ):
            return None
        return super()._proxy_to_logger(method_name, event, *event_args, **event_kw)


def configure_logging(*, log_format: str, level: str) -> dict[str, Any]:
    """Configure structlog and return the stdlib LOGGING dict for Django."""
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    structlog.configure(
        processors=[
            # First: a call below the level costs one isEnabledFor, not the whole chain
            # (the ping tree's per-call debug lines, django-structlog's filtered ones).
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=LeveledBoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    renderer,
                ],
                "foreign_pre_chain": shared,
            }
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            "django_structlog": {"level": "WARNING"},
        },
    }
