"""One ranked request as telemetry sees it: :class:`RequestTrace` (stage timings and spans, cache,
fallback, score drift) and the per-task slot that tells log lines which RPC or request they are
written for."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.trace import SpanKind

from unirank.server.domain import RankResponse
from unirank.server.telemetry import semconv
from unirank.server.telemetry.instruments import Instruments
from unirank.server.telemetry.rpc import RpcScope
from unirank.server.telemetry.spans import format_span_id, format_trace_id, mark_failed, span_attributes
from unirank.server.telemetry.stats import TaskStats

_CURRENT: contextvars.ContextVar[RpcScope | RequestTrace | None] = contextvars.ContextVar(
    "unirank_current_request", default=None
)
# A per-task slot rather than shared state (like OpenTelemetry's own context): the only way a log
# line written anywhere while handling a request can find that request's task, id and trace.


def current_request() -> RpcScope | RequestTrace | None:
    """The RPC or ranked request the calling task is handling, if any (for log lines)."""
    return _CURRENT.get()


def current_rpc() -> RpcScope | None:
    """The RPC the calling task is handling (directly or as a member of its batch), if any."""
    current = _CURRENT.get()
    return current if isinstance(current, RpcScope) else current.rpc if current is not None else None


def enter_rpc(scope: RpcScope) -> None:
    """Log lines written from here on (until :func:`leave_rpc`) name ``scope``."""
    scope._token = _CURRENT.set(scope)


def leave_rpc(scope: RpcScope) -> None:
    if scope._token is not None:
        _CURRENT.reset(scope._token)
        scope._token = None


@dataclass(frozen=True, slots=True)
class BatchMember:
    """What a request hands the batcher as its id: enough for the batch span and batch metrics."""

    task: str
    span_context: trace_api.SpanContext | None
    """The member's recording inference span, or None when it is not traced."""


class RequestTrace:
    """One ranked request: stage timings (always), stage spans (when recording), its outcome.

    ``with trace.stage("retrieval"): ...`` times a stage; stages never nest, so the trace itself is
    the context manager and no object is allocated per stage.
    """

    __slots__ = (
        "_attributes",
        "_instruments",
        "_owns_span",
        "_parent",
        "_stage",
        "_stage_span",
        "_stage_start",
        "_stats",
        "_token",
        "_tracer",
        "model_version",
        "request_id",
        "rpc",
        "span",
        "stages",
        "task",
    )

    def __init__(
        self,
        task: str,
        request_id: str,
        model_version: str,
        rpc: RpcScope | None,
        *,
        stats: TaskStats,
        instruments: Instruments,
        tracer: trace_api.Tracer | None,
        profile_name: str,
    ) -> None:
        self._instruments = instruments
        self._tracer = tracer
        self.task = task
        self.request_id = request_id
        self.model_version = model_version
        self.rpc = rpc
        self.stages: list[tuple[str, float]] = []
        """(stage, milliseconds) in order; the response's debug timings."""
        self._stats = stats
        self._stage = ""
        self._stage_start = 0.0
        self._stage_span: trace_api.Span | None = None
        self._token: contextvars.Token[Any] | None = None
        self._owns_span = False
        self.span: trace_api.Span | None = None
        self._parent: otel_context.Context | None = None
        self._attributes: dict[str, Any] | None = None
        single = rpc is not None and rpc.requests == 1
        if not single:
            # A RecommendBatch member (or a call from outside gRPC): log lines name this request.
            self._token = _CURRENT.set(self)
        if tracer is None or rpc is None or rpc.span is None or not rpc.span.is_recording():
            return
        attributes = span_attributes(task, profile_name, model_version)
        self._attributes = attributes
        if single:
            # The RPC carries just this request: its SERVER span is the request's span.
            self.span = rpc.span
            self.span.set_attributes(attributes)
        else:
            self.span = tracer.start_span(
                "unirank.rank",
                context=trace_api.set_span_in_context(rpc.span),
                kind=SpanKind.INTERNAL,
                attributes=attributes,
            )
            self._owns_span = True
        if request_id:
            self.span.set_attribute(semconv.REQUEST_ID, request_id)
        self._parent = trace_api.set_span_in_context(self.span)

    # -- what log lines read

    @property
    def task_type(self) -> str:
        return self.task

    def trace_id(self) -> str:
        if self.span is not None:
            return format_trace_id(self.span)
        return self.rpc.trace_id() if self.rpc is not None else ""

    def span_id(self) -> str:
        return format_span_id(self._stage_span or self.span)

    # -- stages

    def stage(self, name: str) -> RequestTrace:
        self._stage = name
        return self

    def __enter__(self) -> None:
        if self._parent is not None:
            tracer = self._tracer
            assert tracer is not None
            self._stage_span = tracer.start_span(
                self._stage, context=self._parent, attributes=self._attributes
            )
        self._stage_start = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        elapsed_ms = (time.perf_counter() - self._stage_start) * 1000.0
        self.stages.append((self._stage, elapsed_ms))
        span = self._stage_span
        if span is not None:
            if exc is not None:
                mark_failed(span, exc)
            span.end()
            self._stage_span = None

    def stage_failed(self, error: BaseException) -> None:
        """The current stage failed although the request goes on (e.g. to a fallback)."""
        if self._stage_span is not None:
            mark_failed(self._stage_span, error)

    # -- outcome details

    def cache_lookup(self, hit: bool) -> None:
        if hit:
            self._stats.cache_hits += 1
        else:
            self._stats.cache_misses += 1
        if self.span is not None:
            self.span.set_attribute(semconv.CACHE_HIT, hit)

    def scored(self, candidates: int, top_score: float) -> None:
        """The model scored ``candidates`` items; the best score feeds the task's drift window."""
        drift = self._stats.drift
        if drift is not None:
            drift.observe(top_score)
        if self.span is not None:
            self.span.set_attribute(semconv.CANDIDATES, candidates)
            self.span.set_attribute(semconv.TOP_SCORE, top_score)

    def batch_member(self) -> BatchMember | None:
        """The id to hand the batcher for this request (None: nobody observes batches)."""
        span = self._stage_span
        if span is not None and span.is_recording():
            return BatchMember(self.task, span.get_span_context())
        if self._instruments.batch_metrics:
            return BatchMember(self.task, None)
        return None

    def finish(self, response: RankResponse) -> None:
        """The request was answered (by the model, the cache or a fallback)."""
        stats = self._stats
        if response.served_from_cache:
            served_by = "cache"
        elif response.fallback:
            served_by = "fallback"
            reason = response.fallback_reason.name.lower()
            stats.fallbacks[reason] = stats.fallbacks.get(reason, 0) + 1
        else:
            served_by = "model"
        stats.rankings[served_by] += 1
        self._instruments.record_stages(self.task, self.stages)
        span = self.span
        if span is not None:
            span.set_attribute(semconv.SERVED_BY, served_by)
            span.set_attribute(semconv.FALLBACK, response.fallback)
            if response.fallback:
                span.set_attribute(semconv.FALLBACK_REASON, response.fallback_reason.name.lower())
                span.set_attribute(semconv.FALLBACK_DETAIL, response.fallback_detail)
            span.set_attribute(semconv.RESULTS, len(response.items))
            if self._owns_span:
                span.end()
        self._close()

    def abandon(self, error: BaseException) -> None:
        """The request ended with ``error`` (the RPC's status is recorded by its own scope)."""
        self._instruments.record_stages(self.task, self.stages)
        if self.span is not None and self._owns_span:
            mark_failed(self.span, error)
            self.span.end()
        self._close()

    def _close(self) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
