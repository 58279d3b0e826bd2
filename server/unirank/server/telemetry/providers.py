"""OpenTelemetry SDK providers and exporters for one server, built from its telemetry settings.

Nothing here touches OpenTelemetry's global providers: the server holds its own, so tests can run
several servers with in-memory exporters side by side.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from unirank.server.config import TelemetrySection
from unirank.server.telemetry import semconv

log = logging.getLogger(__name__)


class LinkAwareSampler(Sampler):
    """Samples a span whose links point at a sampled span; otherwise asks ``base``.

    The batch span is a root with one link per member request: it is recorded exactly when at
    least one of the requests it served is, whatever the ratio would have said.
    """

    def __init__(self, base: Sampler) -> None:
        self._base = base

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if links and any(link.context.trace_flags.sampled for link in links):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._base.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"LinkAware{{{self._base.get_description()}}}"


def make_sampler(settings: TelemetrySection) -> Sampler:
    ratio: Sampler = TraceIdRatioBased(settings.sampling_ratio)
    return LinkAwareSampler(ParentBased(ratio) if settings.parent_based else ratio)


def make_resource(settings: TelemetrySection, profile_name: str, version: str) -> Resource:
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES; the resolved service name already honours
    # OTEL_SERVICE_NAME, so setting it here keeps env over file.
    return Resource.create(
        {
            semconv.SERVICE_NAME: settings.service_name,
            semconv.SERVICE_VERSION: version,
            semconv.PROFILE: profile_name,
        },
        schema_url=semconv.SCHEMA_URL,
    )


def otlp_endpoint(settings: TelemetrySection, environ: Mapping[str, str], signal: str) -> str | None:
    """The collector of ``signal`` (``TRACES`` / ``METRICS``): its own variable, else the resolved
    ``otlp_endpoint`` (which already holds ``OTEL_EXPORTER_OTLP_ENDPOINT`` over the file), else
    None for the exporter's default. Resolved here so an explicit ``environ`` is honoured too."""
    return environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip() or settings.otlp_endpoint or None


@dataclass
class PrometheusEndpoint:
    """The scrape endpoint's HTTP server; ``port`` is the bound one (useful with port 0)."""

    host: str
    port: int
    _server: Any = field(repr=False)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Providers:
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    prometheus: PrometheusEndpoint | None

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            # Bounded: an unreachable collector must not hold a stopping server for long.
            self.meter_provider.shutdown(timeout_millis=5_000)
        if self.prometheus is not None:
            self.prometheus.close()


def build_providers(
    settings: TelemetrySection,
    resource: Resource,
    environ: Mapping[str, str],
    *,
    span_processors: Sequence[SpanProcessor] = (),
    metric_readers: Sequence[MetricReader] = (),
) -> Providers:
    """Providers for the configured exporters plus the given processors / readers (tests).

    A signal with no exporter and nothing injected gets no provider at all: the server then skips
    that signal's work per request instead of feeding a no-op.
    """
    processors = list(span_processors)
    if settings.traces_exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # sys.stdout as it is now: the exporter's default was bound when it was imported.
        processors.append(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
    elif settings.traces_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        processors.append(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint(settings, environ, "TRACES")))
        )
    tracer_provider = None
    if processors:
        tracer_provider = TracerProvider(
            sampler=make_sampler(settings), resource=resource, shutdown_on_exit=False
        )
        for processor in processors:
            tracer_provider.add_span_processor(processor)

    readers = list(metric_readers)
    prometheus = None
    interval_ms = settings.metric_export_interval_s * 1000.0
    if settings.metrics_exporter == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        readers.append(
            PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=interval_ms)
        )
    elif settings.metrics_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=otlp_endpoint(settings, environ, "METRICS"))
        readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms))
    elif settings.metrics_exporter == "prometheus":
        reader, prometheus = _prometheus(settings)
        readers.append(reader)
    meter_provider = None
    if readers:
        meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
    return Providers(tracer_provider, meter_provider, prometheus)


def _prometheus(settings: TelemetrySection) -> tuple[MetricReader, PrometheusEndpoint]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    # A registry of our own: the exporter's default is prometheus_client's process-wide one.
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    server, _thread = start_http_server(settings.prometheus_port, settings.prometheus_host, registry=registry)
    port = int(server.server_port)
    log.info("prometheus metrics on http://%s:%d/metrics", settings.prometheus_host, port)
    return reader, PrometheusEndpoint(settings.prometheus_host, port, server)
