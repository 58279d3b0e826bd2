"""Log lines that say which request wrote them: task type, request id and trace id.

``unirank serve`` installs one handler on the root logger with :class:`RequestContextFilter` and
either :class:`JsonFormatter` (one JSON object per line) or the text format with the request's
fields appended. The filter reads the request the *calling task* is handling, so concurrent
requests never mix their fields.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, TextIO

from unirank.server.telemetry.core import current_request

REQUEST_FIELDS = ("task_type", "request_id", "trace_id", "span_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_context)s"


class RequestContextFilter(logging.Filter):
    """Adds ``task_type``, ``request_id``, ``trace_id`` and ``span_id`` to records written while
    handling a request (None outside one), and ``request_context`` for the text format."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = current_request()
        if current is None:
            for name in REQUEST_FIELDS:
                setattr(record, name, None)
            record.request_context = ""
            return True
        record.task_type = current.task_type
        record.request_id = current.request_id or None
        record.trace_id = current.trace_id() or None
        record.span_id = current.span_id() or None
        parts = [f"{name}={getattr(record, name)}" for name in REQUEST_FIELDS if getattr(record, name)]
        record.request_context = f" [{' '.join(parts)}]"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "task_type", None) is not None:
            for name in REQUEST_FIELDS:
                entry[name] = getattr(record, name, None)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def make_handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) in ``log_format`` (``json`` or ``text``)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(level: str, log_format: str, stream: TextIO | None = None) -> None:
    """The process's logging: one handler on the root logger (the CLI calls this, nothing else)."""
    logging.basicConfig(level=level.upper(), handlers=[make_handler(log_format, stream)], force=True)
