"""The server's telemetry object: the facade its interceptor, pipeline and batcher record into.

The composition root builds one :class:`Telemetry` and hands it to the interceptor (one
:class:`~unirank.server.telemetry.rpc.RpcScope` per RPC: the SERVER span, call duration, status),
the pipeline (one :class:`~unirank.server.telemetry.trace.RequestTrace` per ranked request: stage
spans and timings, cache, fallback, score drift) and the batcher (one span per executed batch,
linked to its members' inference spans). It owns the tracer, the in-process counters and the
:class:`~unirank.server.telemetry.instruments.Instruments` that export them.

Cost model: with no trace exporter there is no tracer and no span work at all; with no metric
exporter there is no meter and the only per-request cost is a few integer increments in
:class:`~unirank.server.telemetry.stats.ServingStats`. Unsampled requests get a non-recording
SERVER span and nothing below it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from unirank.server.cache import MemoryUsage
from unirank.server.config import Profile, TelemetrySection
from unirank.server.telemetry import semconv
from unirank.server.telemetry.drift import ScoreReference
from unirank.server.telemetry.instruments import Instruments
from unirank.server.telemetry.providers import PrometheusEndpoint, Providers, build_providers, make_resource
from unirank.server.telemetry.rpc import SERVICE_FULL_NAME, MethodInfo, RpcScope, method_table, peer_of
from unirank.server.telemetry.spans import mark_failed, span_attributes
from unirank.server.telemetry.stats import ServingStats
from unirank.server.telemetry.trace import BatchMember, RequestTrace, current_rpc, enter_rpc, leave_rpc

INSTRUMENTATION_NAME = "unirank.server"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unirank")
    except PackageNotFoundError:
        return "0+unknown"


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
        self.gate_verdicts: dict[tuple[str, str], int] = {}
        """The offline gate's verdicts by (use-case, ``pass`` | ``refuse``), one per judged version."""
        self._methods = method_table(SERVICE_FULL_NAME)
        self._propagator = TraceContextTextMapPropagator()
        self._server_attributes: dict[str, Any] = {}
        self.model_version = ""
        version = _package_version()
        self.tracer: trace_api.Tracer | None = None
        if providers.tracer_provider is not None:
            self.tracer = providers.tracer_provider.get_tracer(
                INSTRUMENTATION_NAME, version, schema_url=semconv.SCHEMA_URL
            )
        meter = None
        if providers.meter_provider is not None:
            meter = providers.meter_provider.get_meter(
                INSTRUMENTATION_NAME, version, schema_url=semconv.SCHEMA_URL
            )
        self._instruments = Instruments(
            meter,
            self.stats,
            self._methods,
            self.served_tasks,
            self.reload_outcomes,
            self.memory,
            self.gate_verdicts,
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
        return self._instruments.batch_metrics

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
        self._instruments.model_attributes = {
            semconv.MODEL_VERSION: version,
            semconv.BACKEND: backend,
            semconv.DEVICE: device,
        }
        self.stats.set_references(references)

    def set_references(self, references: dict[str, ScoreReference]) -> None:
        """The serving model's drift references, measured after it was announced: drift restarts."""
        self.stats.set_references(references)

    def span_attributes(self, task: str, model_version: str) -> dict[str, Any]:
        """What every span carries."""
        return span_attributes(task, self.profile_name, model_version)

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
                peer = peer_of(context)
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
        enter_rpc(scope)
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
        leave_rpc(scope)

    def count_reload(self, outcome: str) -> None:
        """One artifact reload attempt ended with ``outcome`` (``unirank.model.reloads``)."""
        self.reload_outcomes[outcome] = self.reload_outcomes.get(outcome, 0) + 1

    def count_gate(self, task: str, passed: bool) -> None:
        """The offline gate judged a new version on ``task`` (``unirank.gate.decisions``)."""
        key = (task, "pass" if passed else "refuse")
        self.gate_verdicts[key] = self.gate_verdicts.get(key, 0) + 1

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
        self._instruments.record_call(method, task, code, duration_s, server_error)
        return server_error

    # -- ranked requests (the pipeline)

    def start_request(self, task: str, request_id: str, model_version: str) -> RequestTrace:
        return RequestTrace(
            task,
            request_id,
            model_version,
            current_rpc(),
            stats=self.stats.task(task),
            instruments=self._instruments,
            tracer=self.tracer,
            profile_name=self.profile_name,
        )

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
        self._instruments.record_batch(info.size, ((member.task, wait) for member, wait in members))
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
            mark_failed(span, info.error)
        span.end(end_time=end_ns)
