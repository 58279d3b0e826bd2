"""Spans of real RPCs, exported into memory: tree, attributes, propagation, status, sampling."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from unirank.artifact import ModelInputs, load_artifact
from unirank.client import AsyncRecommenderClient, UniRankError
from unirank.client.domain import Category, RecommendationRequest, Search
from unirank.client.monitor import StatsClient
from unirank.server.backends.base import BackendError
from unirank.server.telemetry import semconv

from ..conftest import known_query, profile_with
from .conftest import TASK_NAMES, children, one_call_per_task, traced_server

RECOMMEND = "unirank.v1.RecommenderService/Recommend"
RANKING_STAGES = ["encode", "retrieval", "pre_rules", "inference", "post_rules"]


def _server_spans(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is SpanKind.SERVER]


def _assert_common_attributes(span: ReadableSpan, task: str, profile: str, version: str) -> None:
    attributes = span.attributes or {}
    assert attributes.get(semconv.TASK_TYPE) == task, span.name
    assert attributes.get(semconv.PROFILE) == profile, span.name
    assert attributes.get(semconv.MODEL_VERSION) == version, span.name


async def test_one_request_per_use_case_gives_a_server_span_with_a_child_per_stage(
    artifact_dir: Path,
) -> None:
    artifact = load_artifact(artifact_dir)
    async with traced_server("cpu-realtime", artifact_dir) as (server, captured):
        async with AsyncRecommenderClient(server.address) as client:
            for call in one_call_per_task(artifact).values():
                await call(client)
        port = server.port
    spans = captured.finished()
    roots = _server_spans(spans)
    assert sorted((s.attributes or {})[semconv.TASK_TYPE] for s in roots) == sorted(TASK_NAMES)
    cached = {"search", "category"}  # the cpu-realtime profile caches these two
    for root in roots:
        attributes = root.attributes or {}
        task = attributes[semconv.TASK_TYPE]
        assert root.name == RECOMMEND and root.parent is None
        assert attributes[semconv.RPC_SYSTEM_NAME] == "grpc"
        assert attributes[semconv.RPC_METHOD] == RECOMMEND
        assert attributes[semconv.RPC_RESPONSE_STATUS_CODE] == "OK"
        assert attributes[semconv.SERVER_PORT] == port
        assert attributes[semconv.SERVED_BY] == "model" and attributes[semconv.FALLBACK] is False
        assert attributes[semconv.REQUEST_ID].startswith("req-")
        assert root.status.status_code is StatusCode.UNSET
        stages = children(spans, root)
        # Requests with a user read the online feature store first (notification and new releases here).
        with_user = {"notification", "new_releases"}
        expected = (["features"] if task in with_user else []) + (["cache"] if task in cached else [])
        expected += RANKING_STAGES
        assert [s.name for s in stages] == expected
        for stage in stages:
            assert stage.kind is SpanKind.INTERNAL
            assert stage.context.trace_id == root.context.trace_id
    # Task type, profile and model version on every span, not just the root.
    for span in spans:
        task = (span.attributes or {}).get(semconv.TASK_TYPE)
        assert task in TASK_NAMES
        _assert_common_attributes(span, task, "cpu-realtime", artifact.model_version)


async def test_cache_hits_and_fallbacks_with_their_reason_are_span_attributes(artifact_dir: Path) -> None:
    query = known_query(load_artifact(artifact_dir))
    async with (
        traced_server("cpu-realtime", artifact_dir) as (server, captured),
        AsyncRecommenderClient(server.address) as client,
    ):
        await client.search(query)
        again = await client.search(query)
        cold = await client.related_items("no-such-item")
    assert again.served_from_cache and cold.fallback
    spans = captured.finished()
    miss, hit, fallback = _server_spans(spans)
    assert (miss.attributes or {})[semconv.CACHE_HIT] is False
    assert (hit.attributes or {})[semconv.CACHE_HIT] is True
    assert (hit.attributes or {})[semconv.SERVED_BY] == "cache"
    assert [s.name for s in children(spans, hit)] == ["cache"]
    attributes = fallback.attributes or {}
    assert attributes[semconv.FALLBACK] is True
    assert attributes[semconv.FALLBACK_REASON] == "cold_start"
    assert "anchor" in attributes[semconv.FALLBACK_DETAIL]
    assert [s.name for s in children(spans, fallback)] == ["encode", "fallback"]


async def test_the_server_span_continues_the_trace_of_the_client_span(artifact_dir: Path) -> None:
    caller_spans = InMemorySpanExporter()
    caller_provider = TracerProvider()  # the caller's own, never the global one
    caller_provider.add_span_processor(SimpleSpanProcessor(caller_spans))
    tracer = caller_provider.get_tracer("test-caller")
    query = known_query(load_artifact(artifact_dir))
    async with (
        traced_server("cpu-realtime", artifact_dir) as (server, captured),
        AsyncRecommenderClient(server.address) as client,
    ):
        with tracer.start_as_current_span("caller", kind=SpanKind.CLIENT) as caller:
            await client.search(query)
        await client.search(query + " x")  # no caller span: a new trace
    (first, second) = _server_spans(captured.finished())
    caller_context = caller.get_span_context()
    assert first.context.trace_id == caller_context.trace_id
    assert first.parent is not None and first.parent.span_id == caller_context.span_id
    assert first.parent.is_remote
    assert second.context.trace_id != caller_context.trace_id and second.parent is None


class _Failing:
    """A backend that raises ``error`` on every call."""

    name = "failing"
    device = "cpu"
    inline = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def score(
        self, inputs: ModelInputs, deadline: float | None = None, *, tag: Any = None
    ) -> np.ndarray:
        raise self.error

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def test_span_status_follows_the_server_rules_bad_request_vs_internal_failure(
    artifact_dir: Path,
) -> None:
    artifact = load_artifact(artifact_dir)
    query = known_query(artifact)
    notification = one_call_per_task(artifact)["notification"]
    strict = {"fallback": {"on_backend_error": False}}
    profile = profile_with(tasks={"search": strict, "notification": strict})
    async with traced_server(profile, artifact_dir) as (server, captured):
        pipeline = server.pipeline
        assert pipeline is not None
        real = pipeline.runtime.backend
        async with AsyncRecommenderClient(server.address) as client:
            with pytest.raises(UniRankError, match="INVALID_ARGUMENT"):
                await client.search("")
            pipeline.runtime.backend = _Failing(BackendError("injected"))
            with pytest.raises(UniRankError, match="INTERNAL"):
                await client.search(query)
            pipeline.runtime.backend = _Failing(RuntimeError("a bug"))
            with pytest.raises(UniRankError, match="INTERNAL"):
                await notification(client)
            pipeline.runtime.backend = real
            server.admission.max_in_flight = 0
            with pytest.raises(UniRankError, match="RESOURCE_EXHAUSTED"):
                await client.search(query)
    spans = captured.finished()
    bad, model_down, bug, overloaded = _server_spans(spans)

    # A caller's mistake (or an overload the caller should back off from) is not a server error.
    for span, code in ((bad, "INVALID_ARGUMENT"), (overloaded, "RESOURCE_EXHAUSTED")):
        assert span.status.status_code is StatusCode.UNSET
        assert (span.attributes or {})[semconv.RPC_RESPONSE_STATUS_CODE] == code
        assert semconv.ERROR_TYPE not in (span.attributes or {})
    # An internal failure is, with the status code as error.type and the exception recorded.
    for span, exception_type in ((model_down, "ModelUnavailable"), (bug, "RuntimeError")):
        attributes = span.attributes or {}
        assert span.status.status_code is StatusCode.ERROR
        assert attributes[semconv.RPC_RESPONSE_STATUS_CODE] == "INTERNAL"
        assert attributes[semconv.ERROR_TYPE] == "INTERNAL"
        events = [e for e in span.events if e.name == "exception"]
        assert events and (events[0].attributes or {})["exception.type"].endswith(exception_type)
    inference = [s for s in children(spans, model_down) if s.name == "inference"]
    assert inference and inference[0].status.status_code is StatusCode.ERROR


async def test_health_and_serving_stats_are_not_traced(artifact_dir: Path) -> None:
    async with traced_server("cpu-realtime", artifact_dir) as (server, captured):
        async with AsyncRecommenderClient(server.address) as client:
            assert await client.health() == "SERVING"
            await client.model_info()
        with StatsClient(server.address) as stats:
            await asyncio.to_thread(stats.fetch)
    names = [s.name for s in captured.finished()]
    assert names == ["unirank.v1.RecommenderService/GetModelInfo"]


async def test_sampling_ratio_zero_records_only_traces_the_caller_sampled(artifact_dir: Path) -> None:
    caller_provider = TracerProvider()
    tracer = caller_provider.get_tracer("test-caller")
    query = known_query(load_artifact(artifact_dir))
    async with traced_server("cpu-realtime", artifact_dir, sampling_ratio=0.0) as (server, captured):
        async with AsyncRecommenderClient(server.address) as client:
            await client.search(query)
            with tracer.start_as_current_span("caller") as caller:
                await client.search(query + " x")
        counted = captured.telemetry.stats.task("search").rpcs
    spans = captured.finished()
    # Only the caller's sampled trace, and all of it (parent-based sampling); a model batch that
    # served its request is a root of its own, linked to it (and to no unsampled request).
    batches = [s for s in spans if s.name == "inference.batch"]
    request_spans = [s for s in spans if s.name != "inference.batch"]
    assert {s.context.trace_id for s in request_spans} == {caller.get_span_context().trace_id}
    assert all(
        {link.context.trace_id for link in b.links} == {caller.get_span_context().trace_id} for b in batches
    )
    assert len(_server_spans(spans)) == 1 and len(request_spans) > 1
    assert counted == {("Recommend", "OK"): 2}  # metrics count every request, sampled or not


async def test_batched_inference_gets_one_span_per_batch_linked_to_each_member(artifact_dir: Path) -> None:
    artifact = load_artifact(artifact_dir)
    profile = profile_with(
        "gpu-batched",
        model={"device": "cpu", "batching": {"max_batch_size": 4, "max_queue_delay_ms": 200.0}},
        tasks={name: {"timeout_ms": 30_000} for name in TASK_NAMES},
    )
    calls = one_call_per_task(artifact)
    async with (
        traced_server(profile, artifact_dir) as (server, captured),
        AsyncRecommenderClient(server.address, timeout=60) as client,
    ):
        await asyncio.gather(*(call(client) for call in calls.values()))
    spans = captured.finished()
    batches = [s for s in spans if s.name == "inference.batch"]
    inference = [s for s in spans if s.name == "inference"]
    assert len(inference) == len(TASK_NAMES) and batches
    linked = sorted(link.context.span_id for batch in batches for link in batch.links)
    assert linked == sorted(s.context.span_id for s in inference), "every member linked exactly once"
    assert sum((b.attributes or {})[semconv.BATCH_SIZE] for b in batches) == len(TASK_NAMES)
    for batch in batches:
        attributes = batch.attributes or {}
        assert batch.parent is None, "a batch serves several traces: it is a root with links"
        assert len(batch.links) == attributes[semconv.BATCH_SIZE]
        member_tasks = sorted(
            (s.attributes or {})[semconv.TASK_TYPE]
            for s in inference
            if s.context.span_id in {link.context.span_id for link in batch.links}
        )
        assert list(attributes[semconv.BATCH_TASK_TYPES]) == sorted(set(member_tasks))
        expected_task = member_tasks[0] if len(set(member_tasks)) == 1 else semconv.TASK_MIXED
        _assert_common_attributes(batch, expected_task, "gpu-batched", artifact.model_version)
    # Queue time and batch size per member, labelled by the member's use-case.
    for task in TASK_NAMES:
        assert captured.value("unirank.batch.queue_wait", **{semconv.TASK_TYPE: task}) == 1
        assert captured.value("unirank.batch.size", **{semconv.TASK_TYPE: task}) == 1


async def test_a_batch_rpc_has_one_span_per_member_under_its_server_span(artifact_dir: Path) -> None:
    artifact = load_artifact(artifact_dir)
    query = known_query(artifact)
    category = artifact.catalog.categories.key(1)
    async with (
        traced_server("cpu-realtime", artifact_dir) as (server, captured),
        AsyncRecommenderClient(server.address) as client,
    ):
        await client.recommend_batch(
            [
                RecommendationRequest(Search(query), request_id="b-0"),
                RecommendationRequest(Category(category), request_id="b-1"),
            ]
        )
    spans = captured.finished()
    (root,) = _server_spans(spans)
    assert root.name == "unirank.v1.RecommenderService/RecommendBatch"
    assert (root.attributes or {})[semconv.TASK_TYPE] == semconv.TASK_MIXED
    members = children(spans, root)
    assert sorted(
        ((m.attributes or {})[semconv.TASK_TYPE], (m.attributes or {})[semconv.REQUEST_ID]) for m in members
    ) == [
        ("category", "b-1"),
        ("search", "b-0"),
    ]
    for member in members:
        assert member.name == "unirank.rank"
        assert [s.name for s in children(spans, member)] == ["cache", *RANKING_STAGES]
