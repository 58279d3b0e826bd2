"""Log lines that say which request wrote them: task type, request id and trace id.

``unirank serve`` installs one handler on the root logger with :class:`RequestContextFilter` and
either :class:`JsonFormatter` (one JSON object per line) or the text format with the request's
fields appended. The filter reads the request the *calling task* is handling, so concurrent
requests never mix their fields.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from unirank.server.telemetry.trace import current_request

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


class ThrottledLog:
    """Writes a repeated log line at most once per ``interval_s`` per key, saying how many were held back.

    For conditions that repeat per request (a store that is down, garbage sent by a broken
    client): the first occurrence is logged at once, later ones within the interval are only
    counted, and the next line written for the key says ``(N more like it in the last T s)``.
    One instance per component; it holds one timestamp and one count per key.
    """

    def __init__(
        self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` under ``key`` unless one was logged within the interval; True if written."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            window = now - last if last is not None else 0.0
            message = f"{message} (%d more like it in the last %.0f s)"
            args = (*args, held, window)
        self.logger.log(level, message, *args)
        return True

    def warning(self, key: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, message, *args)
