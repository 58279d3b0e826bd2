"""What every span of the server shares: its attributes, its ids as log lines print them, and how
a failure marks it."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.trace import Status, StatusCode

from unirank.server.errors import ServingError
from unirank.server.telemetry import semconv


def span_attributes(task: str, profile_name: str, model_version: str) -> dict[str, Any]:
    """What every span carries."""
    return {
        semconv.TASK_TYPE: task,
        semconv.PROFILE: profile_name,
        semconv.MODEL_VERSION: model_version,
    }


def format_trace_id(span: trace_api.Span | None) -> str:
    if span is None:
        return ""
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


def format_span_id(span: trace_api.Span | None) -> str:
    if span is None:
        return ""
    context = span.get_span_context()
    return f"{context.span_id:016x}" if context.is_valid else ""


def mark_failed(span: trace_api.Span, error: BaseException) -> None:
    """Span status per the server rules: a caller's mistake is not the span's error."""
    if isinstance(error, asyncio.CancelledError):
        span.set_attribute(semconv.ERROR_TYPE, "cancelled")
        return
    if isinstance(error, ServingError):
        if not semconv.is_server_error(error.code):
            return
        error_type = error.code.name
    else:
        error_type = type(error).__qualname__
    span.set_attribute(semconv.ERROR_TYPE, error_type)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, str(error)))
