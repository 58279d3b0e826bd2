"""Servers whose telemetry exports into memory, and one request per use-case to send them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from unirank.artifact import TASKS, Artifact
from unirank.client import AsyncRecommenderClient, Ranking
from unirank.server.app import UniRankServer
from unirank.server.config import Profile, TelemetrySection, load_profile
from unirank.server.telemetry import Telemetry

from ..conftest import PROFILES, known_query

TASK_NAMES = tuple(spec.name for spec in TASKS)


@dataclass
class Captured:
    """What a server's telemetry exported, in memory."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    telemetry: Telemetry

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of every point of the metric ``name``."""
        data = self.reader.get_metrics_data()
        out = []
        for resource_metrics in data.resource_metrics if data is not None else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        out += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return out

    def value(self, name: str, **attributes: Any) -> float:
        """Sum of the points of ``name`` whose attributes include ``attributes``."""
        total = 0.0
        for attrs, point in self.points(name):
            if all(attrs.get(k) == v for k, v in attributes.items()):
                total += point.value if isinstance(point, NumberDataPoint) else point.count
        return total


@asynccontextmanager
async def traced_server(
    profile: Profile | str, artifact: Path, **settings: Any
) -> AsyncIterator[tuple[UniRankServer, Captured]]:
    """A real server on port 0 whose spans and metrics land in memory (no exporter configured)."""
    if isinstance(profile, str):
        profile = load_profile(PROFILES / f"{profile}.toml")
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = Telemetry.create(
        profile,
        TelemetrySection(**settings),
        environ={},
        span_processors=[SimpleSpanProcessor(spans)],
        metric_readers=[reader],
    )
    server = UniRankServer(profile, artifact, host="127.0.0.1", port=0, telemetry=telemetry)
    await server.start()
    try:
        await server.drift_reference_ready()  # measured after SERVING; tests see drift from the first request
        yield server, Captured(spans, reader, telemetry)
    finally:
        await server.stop(grace_s=1.0)


Call = Callable[[AsyncRecommenderClient], Awaitable[Ranking]]


def one_call_per_task(artifact: Artifact) -> dict[str, Call]:
    """A request per use-case that the model answers (known ids, no fallback)."""
    catalog = artifact.catalog
    popular = artifact.retrieval.popular_items
    user = catalog.users.key(1)
    item = catalog.items.key(int(popular[0]))
    history = catalog.items.key(int(popular[5]))
    query = known_query(artifact)
    category = catalog.categories.key(1)
    return {
        "notification": lambda c: c.notification(
            user, history_item_ids=[history], request_id="req-notification"
        ),
        "related_items": lambda c: c.related_items(item, request_id="req-related"),
        "search": lambda c: c.search(query, request_id="req-search"),
        "category": lambda c: c.category(category, request_id="req-category"),
        "new_releases": lambda c: c.new_releases(user, request_id="req-new-releases"),
    }


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """Direct children of ``parent``, in start order."""
    found = [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return sorted(found, key=lambda s: s.start_time or 0)
