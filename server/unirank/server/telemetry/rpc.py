"""One RPC as telemetry sees it: the method table (name, task label, request count and id of each
RecommenderService method) and :class:`RpcScope`, the SERVER span, clock and outcome of one call."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace as trace_api

from unirank.server.telemetry import semconv
from unirank.server.telemetry.spans import format_span_id, format_trace_id
from unirank.v1 import recommender_pb2 as pb

SERVICE_FULL_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name


def _single_task(request: Any) -> str:
    return request.context.WhichOneof("task") or semconv.TASK_UNSPECIFIED


def _batch_task(request: Any) -> str:
    labels = {r.context.WhichOneof("task") or semconv.TASK_UNSPECIFIED for r in request.requests}
    if len(labels) == 1:
        return labels.pop()
    return semconv.TASK_MIXED if labels else semconv.TASK_UNSPECIFIED


def _batch_request_id(request: Any) -> str:
    # A batch of one is traced like a single request (see RequestTrace), so it names its member.
    return request.requests[0].context.request_id if len(request.requests) == 1 else ""


@dataclass(frozen=True)
class MethodInfo:
    """One RPC method as telemetry names and labels it."""

    full_name: str
    """``unirank.v1.RecommenderService/Recommend``: the span name and ``rpc.method``."""
    short_name: str
    task_of: Callable[[Any], str]
    """The task label of a request message (``unspecified`` / ``mixed`` where there is no one task)."""
    requests_of: Callable[[Any], int]
    """How many ranked requests the message carries."""
    request_id_of: Callable[[Any], str]


def method_table(service_full_name: str) -> dict[str, MethodInfo]:
    def info(
        name: str,
        task_of: Callable[[Any], str],
        requests_of: Callable[[Any], int],
        request_id_of: Callable[[Any], str],
    ) -> tuple[str, MethodInfo]:
        full = f"{service_full_name}/{name}"
        return f"/{full}", MethodInfo(full, name, task_of, requests_of, request_id_of)

    return dict(
        (
            info("Recommend", _single_task, lambda r: 1, lambda r: r.context.request_id),
            info("RecommendBatch", _batch_task, lambda r: len(r.requests), _batch_request_id),
            info("GetModelInfo", lambda r: semconv.TASK_UNSPECIFIED, lambda r: 0, lambda r: ""),
            info("RecordEvents", lambda r: semconv.TASK_UNSPECIFIED, lambda r: 0, lambda r: ""),
        )
    )


def peer_of(context: grpc.aio.ServicerContext) -> tuple[str, int] | None:
    # "ipv4:127.0.0.1:53124", "ipv6:[::1]:53124"; unix sockets and the like carry no port.
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def trace_id_from_metadata(context: grpc.aio.ServicerContext | None) -> str:
    if context is None:
        return ""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            parts = value.split("-")
            if len(parts) >= 4 and len(parts[1]) == 32:
                return parts[1]
    return ""


class RpcScope:
    """One RPC being handled: its SERVER span, clock and outcome."""

    __slots__ = (
        "_grpc_context",
        "_token",
        "code",
        "error",
        "message",
        "method",
        "request_id",
        "requests",
        "span",
        "start",
        "start_ns",
        "task",
    )

    def __init__(
        self, method: MethodInfo, task: str, requests: int, request_id: str, grpc_context: Any
    ) -> None:
        self.method = method
        self.task = task
        self.requests = requests
        self.request_id = request_id
        self._grpc_context = grpc_context
        self.span: trace_api.Span | None = None
        self.code = grpc.StatusCode.OK
        self.error: BaseException | None = None
        self.message = ""
        self.start = time.perf_counter()
        self.start_ns = 0
        self._token: contextvars.Token[Any] | None = None

    def fail(self, code: grpc.StatusCode, error: BaseException | None = None, message: str = "") -> None:
        """Record the status the RPC ends with (the interceptor calls this before aborting)."""
        self.code = code
        self.error = error
        self.message = message or (str(error) if error is not None else "")

    # what log lines read
    @property
    def task_type(self) -> str:
        return self.task

    def trace_id(self) -> str:
        return format_trace_id(self.span) or trace_id_from_metadata(self._grpc_context)

    def span_id(self) -> str:
        return format_span_id(self.span)
