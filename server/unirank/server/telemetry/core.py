"""The server's telemetry object, and the per-RPC and per-request scopes that record into it.

The composition root builds one :class:`Telemetry` and hands it to the interceptor (one
:class:`RpcScope` per RPC: the SERVER span, call duration, status), the pipeline (one
:class:`RequestTrace` per ranked request: stage spans and timings, cache, fallback, score drift)
and the batcher (one span per executed batch, linked to its members' inference spans).

Cost model: with no trace exporter there is no tracer and no span work at all; with no metric
exporter there is no meter and the only per-request cost is a few integer increments in
:class:`~unirank.server.telemetry.stats.ServingStats`. Unsampled requests get a non-recording
SERVER span and nothing below it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from unirank.server.cache import MemoryUsage
from unirank.server.config import Profile, TelemetrySection
from unirank.server.domain import RankResponse
from unirank.server.errors import ServingError
from unirank.server.telemetry import semconv
from unirank.server.telemetry.drift import ScoreReference
from unirank.server.telemetry.kpi import create_kpi_instruments
from unirank.server.telemetry.providers import PrometheusEndpoint, Providers, build_providers, make_resource
from unirank.server.telemetry.stats import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_S, ServingStats
from unirank.v1 import recommender_pb2 as pb

INSTRUMENTATION_NAME = "unirank.server"
SERVICE_FULL_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name

_CURRENT: contextvars.ContextVar[RpcScope | RequestTrace | None] = contextvars.ContextVar(
    "unirank_current_request", default=None
)
# A per-task slot rather than shared state (like OpenTelemetry's own context): the only way a log
# line written anywhere while handling a request can find that request's task, id and trace.


def current_request() -> RpcScope | RequestTrace | None:
    """The RPC or ranked request the calling task is handling, if any (for log lines)."""
    return _CURRENT.get()


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unirank")
    except PackageNotFoundError:
        return "0+unknown"


# -- what the interceptor needs to know per method --------------------------------------------


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


def _method_table(service_full_name: str) -> dict[str, MethodInfo]:
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


def _peer(context: grpc.aio.ServicerContext) -> tuple[str, int] | None:
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


def _trace_id_from_metadata(context: grpc.aio.ServicerContext | None) -> str:
    if context is None:
        return ""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            parts = value.split("-")
            if len(parts) >= 4 and len(parts[1]) == 32:
                return parts[1]
    return ""


def _format_trace_id(span: trace_api.Span | None) -> str:
    if span is None:
        return ""
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


def _format_span_id(span: trace_api.Span | None) -> str:
    if span is None:
        return ""
    context = span.get_span_context()
    return f"{context.span_id:016x}" if context.is_valid else ""


# -- scopes ------------------------------------------------------------------------------------


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
        return _format_trace_id(self.span) or _trace_id_from_metadata(self._grpc_context)

    def span_id(self) -> str:
        return _format_span_id(self.span)


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
        "_owns_span",
        "_parent",
        "_stage",
        "_stage_span",
        "_stage_start",
        "_stats",
        "_telemetry",
        "_token",
        "model_version",
        "request_id",
        "rpc",
        "span",
        "stages",
        "task",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        task: str,
        request_id: str,
        model_version: str,
        rpc: RpcScope | None,
    ) -> None:
        self._telemetry = telemetry
        self.task = task
        self.request_id = request_id
        self.model_version = model_version
        self.rpc = rpc
        self.stages: list[tuple[str, float]] = []
        """(stage, milliseconds) in order; the response's debug timings."""
        self._stats = telemetry.stats.task(task)
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
        tracer = telemetry.tracer
        if tracer is None or rpc is None or rpc.span is None or not rpc.span.is_recording():
            return
        attributes = telemetry.span_attributes(task, model_version)
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
            return _format_trace_id(self.span)
        return self.rpc.trace_id() if self.rpc is not None else ""

    def span_id(self) -> str:
        return _format_span_id(self._stage_span or self.span)

    # -- stages

    def stage(self, name: str) -> RequestTrace:
        self._stage = name
        return self

    def __enter__(self) -> None:
        if self._parent is not None:
            tracer = self._telemetry.tracer
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
                _mark_failed(span, exc)
            span.end()
            self._stage_span = None

    def stage_failed(self, error: BaseException) -> None:
        """The current stage failed although the request goes on (e.g. to a fallback)."""
        if self._stage_span is not None:
            _mark_failed(self._stage_span, error)

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
        if self._telemetry.batch_metrics:
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
        self._telemetry.record_stages(self.task, self.stages)
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
        self._telemetry.record_stages(self.task, self.stages)
        if self.span is not None and self._owns_span:
            _mark_failed(self.span, error)
            self.span.end()
        self._close()

    def _close(self) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None


def _mark_failed(span: trace_api.Span, error: BaseException) -> None:
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


# -- the telemetry object ----------------------------------------------------------------------


class Telemetry:
    """Tracer, meter, instruments and per-task counters of one server.

    Build it with :meth:`create` (exporters from settings, plus in-memory ones in tests) or
    :meth:`disabled`; call :meth:`shutdown` when the server stops.
    """

    def __init__(
        self,
        settings: TelemetrySection,
        profile_name: str,
        served_tasks: Iterable[str],
        providers: Providers,
    ) -> None:
        self.settings = settings
        self.profile_name = profile_name
        self.served_tasks = tuple(served_tasks)
        self.providers = providers
        self.stats = ServingStats(settings.drift_window, settings.drift_min_samples)
        self.memory: dict[tuple[str, str], Callable[[], MemoryUsage]] = {}
        """Bounded in-process stores by (store, use-case), whose sizes are exported (watch_memory)."""
        self.reload_outcomes: dict[str, int] = {}
        """Artifact reload attempts by outcome (loaded, refused, incomplete, unreadable, poll_error)."""
        self._methods = _method_table(SERVICE_FULL_NAME)
        self._propagator = TraceContextTextMapPropagator()
        self._server_attributes: dict[str, Any] = {}
        self.model_version = ""
        self._model_attributes: dict[str, str] = {}
        version = _package_version()
        self.tracer: trace_api.Tracer | None = None
        if providers.tracer_provider is not None:
            self.tracer = providers.tracer_provider.get_tracer(
                INSTRUMENTATION_NAME, version, schema_url=semconv.SCHEMA_URL
            )
        self._attribute_cache: dict[tuple[str, ...], dict[str, Any]] = {}
        self._call_duration: Any = None
        self._stage_duration: Any = None
        self._queue_wait: Any = None
        self._batch_size: Any = None
        if providers.meter_provider is not None:
            self._create_instruments(
                providers.meter_provider.get_meter(
                    INSTRUMENTATION_NAME, version, schema_url=semconv.SCHEMA_URL
                )
            )

    @classmethod
    def create(
        cls,
        profile: Profile,
        settings: TelemetrySection | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        span_processors: Sequence[SpanProcessor] = (),
        metric_readers: Sequence[MetricReader] = (),
    ) -> Telemetry:
        """Telemetry of a server of ``profile``: exporters from ``settings`` plus the given extras.

        ``settings`` defaults to the profile's ``[telemetry]`` resolved against ``environ``
        (default ``os.environ``); tests pass in-memory ``span_processors`` / ``metric_readers``.
        """
        from unirank.server.telemetry.settings import resolve

        environ = os.environ if environ is None else environ
        if settings is None:
            settings = resolve(profile.telemetry, environ)
        resource = make_resource(settings, profile.name, _package_version())
        providers = build_providers(
            settings, resource, environ, span_processors=span_processors, metric_readers=metric_readers
        )
        return cls(settings, profile.name, profile.tasks, providers)

    @classmethod
    def disabled(cls, profile_name: str = "", served_tasks: Iterable[str] = ()) -> Telemetry:
        """No tracer, no meter: only the in-process counters."""
        return cls(TelemetrySection(), profile_name, served_tasks, Providers(None, None, None))

    @property
    def prometheus(self) -> PrometheusEndpoint | None:
        return self.providers.prometheus

    @property
    def batch_metrics(self) -> bool:
        return self._queue_wait is not None

    def shutdown(self) -> None:
        """Flush and stop exporters (the final spans and metric points are exported)."""
        self.providers.shutdown()

    # -- facts about the server

    def set_server_address(self, host: str, port: int) -> None:
        self._server_attributes = {semconv.SERVER_ADDRESS: host, semconv.SERVER_PORT: port}

    def set_model(
        self, version: str, backend: str, device: str, references: dict[str, ScoreReference]
    ) -> None:
        """The model now serving; drift restarts against its reference distributions."""
        self.model_version = version
        self._model_attributes = {
            semconv.MODEL_VERSION: version,
            semconv.BACKEND: backend,
            semconv.DEVICE: device,
        }
        self.stats.set_references(references)

    def span_attributes(self, task: str, model_version: str) -> dict[str, Any]:
        """What every span carries."""
        return {
            semconv.TASK_TYPE: task,
            semconv.PROFILE: self.profile_name,
            semconv.MODEL_VERSION: model_version,
        }

    # -- RPCs (the interceptor)

    def method(self, path: str) -> MethodInfo | None:
        """The method the interceptor should record, or None to leave it alone."""
        return self._methods.get(path)

    def start_rpc(self, method: MethodInfo, request: Any, context: grpc.aio.ServicerContext) -> RpcScope:
        task = method.task_of(request)
        scope = RpcScope(method, task, method.requests_of(request), method.request_id_of(request), context)
        self.stats.task(task).in_flight += 1
        tracer = self.tracer
        if tracer is not None:
            carrier = {
                key: value
                for key, value in context.invocation_metadata() or ()
                if key in ("traceparent", "tracestate")
            }
            parent = self._propagator.extract(carrier) if carrier else None
            attributes = {
                semconv.RPC_SYSTEM_NAME: "grpc",
                semconv.RPC_METHOD: method.full_name,
                **self._server_attributes,
                **self.span_attributes(task, self.model_version),
            }
            scope.start_ns = time.time_ns()
            span = tracer.start_span(
                method.full_name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                start_time=scope.start_ns,
            )
            if span.is_recording():
                peer = _peer(context)
                if peer is not None:
                    span.set_attributes(
                        {
                            semconv.NETWORK_PEER_ADDRESS: peer[0],
                            semconv.NETWORK_PEER_PORT: peer[1],
                            semconv.NETWORK_TRANSPORT: "tcp",
                        }
                    )
                if scope.request_id:
                    span.set_attribute(semconv.REQUEST_ID, scope.request_id)
            scope.span = span
        scope._token = _CURRENT.set(scope)
        return scope

    def end_rpc(self, scope: RpcScope) -> None:
        duration_s = time.perf_counter() - scope.start
        code = scope.code
        self.stats.task(scope.task).in_flight -= 1
        server_error = self._record_rpc(scope.method, scope.task, code, duration_s)
        span = scope.span
        if span is not None:
            if span.is_recording():
                span.set_attribute(semconv.RPC_RESPONSE_STATUS_CODE, code.name)
                if server_error:
                    span.set_attribute(semconv.ERROR_TYPE, code.name)
                    if scope.error is not None:
                        span.record_exception(scope.error)
                    span.set_status(Status(StatusCode.ERROR, scope.message or code.name))
            # The span lasts exactly what rpc.server.call.duration records.
            span.end(end_time=scope.start_ns + int(duration_s * 1e9))
        if scope._token is not None:
            _CURRENT.reset(scope._token)
            scope._token = None

    def count_reload(self, outcome: str) -> None:
        """One artifact reload attempt ended with ``outcome`` (``unirank.model.reloads``)."""
        self.reload_outcomes[outcome] = self.reload_outcomes.get(outcome, 0) + 1

    def watch_memory(self, store: str, task: str, usage: Callable[[], MemoryUsage]) -> None:
        """Export the size of a bounded in-process store (``unirank.memory.*``, labelled by store
        and use-case; ``task`` empty for one shared by every use-case)."""
        self.memory[(store, task)] = usage

    def count_shed(self, method: MethodInfo, request: Any, code: grpc.StatusCode) -> None:
        """A call refused on arrival (overload, draining): counted by task and code, not traced."""
        self._record_rpc(method, method.task_of(request), code, 0.0)

    def _record_rpc(self, method: MethodInfo, task: str, code: grpc.StatusCode, duration_s: float) -> bool:
        """Count one finished RPC in the serving stats and the call-duration histogram; returns
        whether ``code`` is a server error."""
        self.stats.task(task).rpc_finished(method.short_name, code.name, duration_s)
        server_error = semconv.is_server_error(code)
        if self._call_duration is not None:
            self._call_duration.record(duration_s, self._rpc_attributes(method, task, code, server_error))
        return server_error

    def _rpc_attributes(
        self, method: MethodInfo, task: str, code: grpc.StatusCode, server_error: bool
    ) -> dict[str, Any]:
        key = (method.short_name, task, code.name)
        attributes = self._attribute_cache.get(key)
        if attributes is None:
            attributes = {
                semconv.RPC_SYSTEM_NAME: "grpc",
                semconv.RPC_METHOD: method.full_name,
                semconv.RPC_RESPONSE_STATUS_CODE: code.name,
                semconv.TASK_TYPE: task,
            }
            if server_error:
                attributes[semconv.ERROR_TYPE] = code.name
            self._attribute_cache[key] = attributes
        return attributes

    # -- ranked requests (the pipeline)

    def start_request(self, task: str, request_id: str, model_version: str) -> RequestTrace:
        current = _CURRENT.get()
        rpc = current if isinstance(current, RpcScope) else current.rpc if current is not None else None
        return RequestTrace(self, task, request_id, model_version, rpc)

    def record_stages(self, task: str, stages: Iterable[tuple[str, float]]) -> None:
        histogram = self._stage_duration
        if histogram is None:
            return
        for stage, milliseconds in stages:
            histogram.record(milliseconds / 1000.0, self._task_attributes(task, stage))

    def _task_attributes(self, task: str, stage: str = "") -> dict[str, Any]:
        key = ("task", task, stage)
        attributes = self._attribute_cache.get(key)
        if attributes is None:
            attributes = {semconv.TASK_TYPE: task}
            if stage:
                attributes[semconv.STAGE] = stage
            self._attribute_cache[key] = attributes
        return attributes

    # -- batches (the batcher's observer)

    def batch_observer(self, model_version: str) -> Callable[[Any], None] | None:
        """The observer to give a batching backend, or None when nothing would use it."""
        if self.tracer is None and not self.batch_metrics:
            return None
        return functools.partial(self.observe_batch, model_version)

    def observe_batch(self, model_version: str, info: Any) -> None:
        """One executed batch (a ``BatchInfo``): queue wait and size per member, one linked span."""
        members = [
            (m, wait)
            for m, wait in zip(info.request_ids, info.queue_wait_s, strict=False)
            if isinstance(m, BatchMember)
        ]
        if not members:
            return
        if self._queue_wait is not None:
            for member, wait in members:
                attributes = self._task_attributes(member.task)
                self._queue_wait.record(wait, attributes)
                self._batch_size.record(info.size, attributes)
        if self.tracer is None:
            return
        links = [Link(m.span_context) for m, _ in members if m.span_context is not None]
        if not links:
            return
        tasks = sorted({m.task for m, _ in members})
        # BatchInfo speaks loop.time(); spans want the wall clock.
        ended_ago_s = asyncio.get_running_loop().time() - (info.started_at + info.duration_s)
        end_ns = time.time_ns() - int(ended_ago_s * 1e9)
        attributes = {
            **self.span_attributes(tasks[0] if len(tasks) == 1 else semconv.TASK_MIXED, model_version),
            semconv.BATCH_SIZE: info.size,
            semconv.BATCH_TASK_TYPES: tasks,
            semconv.BATCH_MAX_QUEUE_WAIT: max(info.queue_wait_s, default=0.0),
        }
        span = self.tracer.start_span(
            "inference.batch",
            context=otel_context.Context(),  # a root: the worker task's context is a member's
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            start_time=end_ns - int(info.duration_s * 1e9),
        )
        if info.error is not None:
            _mark_failed(span, info.error)
        span.end(end_time=end_ns)

    # -- metrics
    #
    # Points carry the task label and what the convention asks for; the profile, service and
    # version are resource attributes (one process serves one profile). The SDK spends most of a
    # record on attributes (~10 us for three), so points carry no more than they need.

    def _create_instruments(self, meter: Any) -> None:
        self._call_duration = meter.create_histogram(
            semconv.RPC_SERVER_CALL_DURATION,
            unit="s",
            description="Duration of incoming RPCs, by use-case and status code.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self._stage_duration = meter.create_histogram(
            "unirank.stage.duration",
            unit="s",
            description="Duration of each pipeline stage of a ranked request, by use-case.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self._queue_wait = meter.create_histogram(
            "unirank.batch.queue_wait",
            unit="s",
            description="Time a request waited in the batch queue before its batch ran, by use-case.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self._batch_size = meter.create_histogram(
            "unirank.batch.size",
            unit="{request}",
            description="Size of the executed batch each request ran in, by the request's use-case.",
            explicit_bucket_boundaries_advisory=BATCH_SIZE_BUCKETS,
        )
        meter.create_observable_counter(
            "unirank.server.requests",
            callbacks=[self._observe_requests],
            unit="{request}",
            description="Finished RPCs by use-case, method and status code.",
        )
        meter.create_observable_up_down_counter(
            "unirank.server.active_requests",
            callbacks=[self._observe_in_flight],
            unit="{request}",
            description="RPCs being handled now, by use-case.",
        )
        meter.create_observable_counter(
            "unirank.rankings",
            callbacks=[self._observe_rankings],
            unit="{request}",
            description="Ranked requests by use-case and what answered them (model, cache, fallback).",
        )
        meter.create_observable_counter(
            "unirank.fallbacks",
            callbacks=[self._observe_fallbacks],
            unit="{request}",
            description="Ranked requests answered by the use-case's fallback, by reason.",
        )
        meter.create_observable_counter(
            "unirank.cache.lookups",
            callbacks=[self._observe_cache],
            unit="{request}",
            description="Response cache lookups by use-case and result (hit, miss).",
        )
        meter.create_observable_counter(
            "unirank.model.reloads",
            callbacks=[self._observe_reloads],
            unit="{reload}",
            description="Attempts to load a new artifact version, by outcome: loaded, refused, "
            "incomplete (retried), unreadable (the repository changed while read), poll_error.",
        )
        meter.create_observable_gauge(
            "unirank.memory.bytes",
            callbacks=[self._observe_memory_bytes],
            unit="By",
            description="Estimated memory held by each bounded in-process store (response cache per "
            "use-case, feature store), against its profile's max_bytes.",
        )
        meter.create_observable_gauge(
            "unirank.memory.entries",
            callbacks=[self._observe_memory_entries],
            unit="{entry}",
            description="Entries in each bounded in-process store (cached answers, users).",
        )
        meter.create_observable_counter(
            "unirank.memory.evictions",
            callbacks=[self._observe_memory_evictions],
            unit="{entry}",
            description="Entries dropped from each bounded in-process store, by reason: expired "
            "(time-to-live) or capacity (least recently used, past max_bytes or the entry bound).",
        )
        meter.create_observable_gauge(
            "unirank.model.info",
            callbacks=[self._observe_model],
            unit="1",
            description="1 per served use-case, labelled with the model version, backend and device.",
        )
        meter.create_observable_gauge(
            "unirank.score.drift.psi",
            callbacks=[self._observe_drift],
            unit="1",
            description="PSI of the live top-score distribution against the artifact's offline "
            "reference, per use-case (> 0.25: a significant shift).",
        )
        create_kpi_instruments(meter, self.stats.kpis)

    # Callbacks run on the exporter's thread: they read copies of the loop's counters.

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        names = {info.short_name: info.full_name for info in self._methods.values()}
        for task, stats in self.stats.items():
            for (method, code), count in stats.rpcs.copy().items():
                yield Observation(
                    count,
                    {
                        semconv.TASK_TYPE: task,
                        semconv.RPC_METHOD: names.get(method, method),
                        semconv.RPC_RESPONSE_STATUS_CODE: code,
                    },
                )

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        for task, stats in self.stats.items():
            yield Observation(stats.in_flight, self._task_attributes(task))

    def _observe_rankings(self, options: CallbackOptions) -> Iterable[Observation]:
        for task, stats in self.stats.items():
            for served_by, count in stats.rankings.copy().items():
                if count:
                    yield Observation(count, {**self._task_attributes(task), semconv.SERVED_BY: served_by})

    def _observe_fallbacks(self, options: CallbackOptions) -> Iterable[Observation]:
        for task, stats in self.stats.items():
            for reason, count in stats.fallbacks.copy().items():
                yield Observation(count, {**self._task_attributes(task), semconv.FALLBACK_REASON: reason})

    def _observe_cache(self, options: CallbackOptions) -> Iterable[Observation]:
        for task, stats in self.stats.items():
            if stats.cache_hits or stats.cache_misses:
                attributes = self._task_attributes(task)
                yield Observation(stats.cache_hits, {**attributes, semconv.CACHE_RESULT: "hit"})
                yield Observation(stats.cache_misses, {**attributes, semconv.CACHE_RESULT: "miss"})

    def _observe_reloads(self, options: CallbackOptions) -> Iterable[Observation]:
        for outcome, count in self.reload_outcomes.copy().items():
            yield Observation(count, {semconv.RELOAD_OUTCOME: outcome})

    def _memory_usage(self) -> Iterable[tuple[dict[str, Any], MemoryUsage]]:
        for (store, task), usage in list(self.memory.items()):
            attributes = {semconv.MEMORY_STORE: store}
            if task:
                attributes[semconv.TASK_TYPE] = task
            yield attributes, usage()

    def _observe_memory_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        for attributes, usage in self._memory_usage():
            yield Observation(usage.bytes, attributes)

    def _observe_memory_entries(self, options: CallbackOptions) -> Iterable[Observation]:
        for attributes, usage in self._memory_usage():
            yield Observation(usage.entries, attributes)

    def _observe_memory_evictions(self, options: CallbackOptions) -> Iterable[Observation]:
        for attributes, usage in self._memory_usage():
            yield Observation(usage.expired, {**attributes, semconv.EVICTION_REASON: "expired"})
            yield Observation(usage.evicted, {**attributes, semconv.EVICTION_REASON: "capacity"})

    def _observe_model(self, options: CallbackOptions) -> Iterable[Observation]:
        for task in self.served_tasks:
            yield Observation(1, {**self._task_attributes(task), **self._model_attributes})

    def _observe_drift(self, options: CallbackOptions) -> Iterable[Observation]:
        for task, stats in self.stats.items():
            if stats.drift is not None:
                value = stats.drift.psi()
                if value is not None:
                    yield Observation(value, self._task_attributes(task))
