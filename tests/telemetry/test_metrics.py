"""Metric points of real RPCs, read from an in-memory reader: every one carries the use-case."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from unirank.artifact import load_artifact
from unirank.client import AsyncRecommenderClient, UniRankError
from unirank.client.monitor import (
    ServingStats,
    StatsClient,
    TaskCounters,
    format_views,
    percentile,
    summarize,
)
from unirank.server.telemetry import psi, semconv
from unirank.server.telemetry.stats import LATENCY_BUCKETS_S

from ..conftest import known_query
from .conftest import TASK_NAMES, one_call_per_task, traced_server

METRICS = (
    "rpc.server.call.duration",
    "unirank.server.requests",
    "unirank.server.active_requests",
    "unirank.stage.duration",
    "unirank.rankings",
    "unirank.fallbacks",
    "unirank.cache.lookups",
    "unirank.model.info",
    "unirank.score.drift.psi",
)
ALLOWED_LABELS = {
    semconv.TASK_TYPE,
    semconv.PROFILE,
    semconv.RPC_SYSTEM_NAME,
    semconv.RPC_METHOD,
    semconv.RPC_RESPONSE_STATUS_CODE,
    semconv.ERROR_TYPE,
    semconv.STAGE,
    semconv.SERVED_BY,
    semconv.FALLBACK_REASON,
    semconv.CACHE_RESULT,
    semconv.MODEL_VERSION,
    semconv.BACKEND,
    semconv.DEVICE,
}


async def test_one_request_per_use_case_gives_metric_points_labelled_by_task(artifact_dir: Path) -> None:
    artifact = load_artifact(artifact_dir)
    calls = one_call_per_task(artifact)
    async with traced_server("cpu-realtime", artifact_dir, drift_window=10, drift_min_samples=1) as (
        server,
        captured,
    ):
        async with AsyncRecommenderClient(server.address) as client:
            for call in calls.values():
                await call(client)
            await client.search(known_query(artifact))  # a cache hit
            await client.related_items("no-such-item")  # a cold-start fallback
            with pytest.raises(UniRankError):
                await client.search("")  # INVALID_ARGUMENT, still labelled "search"
        by_name = {name: captured.points(name) for name in METRICS}

    for name, points in by_name.items():
        assert points, f"no points for {name}"
        for attributes, _ in points:
            assert attributes.get(semconv.TASK_TYPE) in TASK_NAMES, (name, attributes)
            assert set(attributes) <= ALLOWED_LABELS, (name, attributes)
    # No user or item id ever becomes a label value.
    ids = {
        artifact.catalog.users.key(1),
        artifact.catalog.items.key(int(artifact.retrieval.popular_items[0])),
    }
    ids |= {"no-such-item", "req-search", "req-notification"}
    values = {str(v) for points in by_name.values() for attributes, _ in points for v in attributes.values()}
    assert not values & ids

    ok = {semconv.RPC_RESPONSE_STATUS_CODE: "OK"}
    for task in TASK_NAMES:
        label = {semconv.TASK_TYPE: task}
        expected = {"search": 2, "related_items": 2}.get(task, 1)
        assert captured.value("rpc.server.call.duration", **label, **ok) == expected
        assert captured.value("unirank.server.requests", **label, **ok) == expected
        assert captured.value("unirank.server.active_requests", **label) == 0
        assert captured.value("unirank.stage.duration", **label, **{semconv.STAGE: "encode"}) >= 1
        assert (
            captured.value("unirank.model.info", **label, **{semconv.MODEL_VERSION: artifact.model_version})
            == 1
        )
    assert (
        captured.value("unirank.server.requests", **{semconv.RPC_RESPONSE_STATUS_CODE: "INVALID_ARGUMENT"})
        == 1
    )
    search = {semconv.TASK_TYPE: "search"}
    assert captured.value("unirank.cache.lookups", **search, **{semconv.CACHE_RESULT: "hit"}) == 1
    assert captured.value("unirank.cache.lookups", **search, **{semconv.CACHE_RESULT: "miss"}) == 1
    assert captured.value("unirank.rankings", **search, **{semconv.SERVED_BY: "cache"}) == 1
    related = {semconv.TASK_TYPE: "related_items", semconv.FALLBACK_REASON: "cold_start"}
    assert captured.value("unirank.fallbacks", **related) == 1
    # Drift: one model-scored request per task is enough with drift_min_samples=1.
    drift = {
        attributes[semconv.TASK_TYPE]: point.value for attributes, point in by_name["unirank.score.drift.psi"]
    }
    assert set(drift) == set(TASK_NAMES) and all(value >= 0 for value in drift.values())


async def test_serving_stats_rpc_reports_the_same_counters(artifact_dir: Path) -> None:
    artifact = load_artifact(artifact_dir)
    calls = one_call_per_task(artifact)
    async with traced_server("cpu-realtime", artifact_dir, drift_window=10, drift_min_samples=2) as (
        server,
        captured,
    ):
        async with AsyncRecommenderClient(server.address) as client:
            for call in calls.values():
                await call(client)
            await calls["search"](client)
            await calls["notification"](client)
            await client.related_items("no-such-item")
        with StatsClient(server.address) as stats_client:
            stats = await asyncio.to_thread(stats_client.fetch)
        psi_gauge = {a[semconv.TASK_TYPE]: p.value for a, p in captured.points("unirank.score.drift.psi")}
    assert stats.profile == "cpu-realtime" and stats.model_version == artifact.model_version
    assert stats.latency_bucket_bounds_s == LATENCY_BUCKETS_S
    tasks = stats.tasks
    assert set(tasks) == set(TASK_NAMES)
    assert tasks["search"].rpcs_by_code == {"OK": 2}
    assert tasks["search"].cache_hits == 1 and tasks["search"].served_by_cache == 1
    assert tasks["related_items"].fallbacks_by_reason == {"cold_start": 1}
    for counters in tasks.values():
        assert sum(counters.latency_bucket_counts) == sum(counters.rpcs_by_code.values())
        assert counters.in_flight == 0 and counters.has_reference
    # Two model-scored notifications reach drift_min_samples; one category does not.
    assert tasks["notification"].psi == pytest.approx(psi_gauge["notification"])
    assert tasks["category"].psi is None and "category" not in psi_gauge
    rows = {row.task: row for row in summarize(stats)}
    assert rows["related_items"].fallback_rate == pytest.approx(0.5)
    assert rows["search"].cache_hit_rate == pytest.approx(0.5)
    assert rows["search"].error_rate == 0.0 and rows["search"].p50_ms is not None


def test_percentile_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    bounds = (0.001, 0.002, 0.004)
    counts = (0, 10, 10, 0)  # 10 in (1, 2] ms, 10 in (2, 4] ms
    assert percentile(bounds, counts, 0.5) == pytest.approx(0.002)
    assert percentile(bounds, counts, 0.25) == pytest.approx(0.0015)
    assert percentile(bounds, counts, 0.75) == pytest.approx(0.003)
    assert percentile(bounds, (0, 0, 0, 5), 0.99) == 0.004  # overflow: the last bound, a lower limit
    assert percentile(bounds, (0, 0, 0, 0), 0.5) is None


def test_psi_of_known_distributions() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    # (0.7-0.5) ln(0.7/0.5) + (0.3-0.5) ln(0.3/0.5)
    assert psi([0.5, 0.5], [0.7, 0.3]) == pytest.approx(0.2 * 0.33647224 + 0.2 * 0.51082562)
    assert psi([0.5, 0.5], [1.0, 0.0]) > 1.0  # an emptied bin is a large but finite shift


def test_the_monitor_names_the_row_without_a_use_case_and_explains_the_psi_column() -> None:
    stats = ServingStats(
        model_version="v",
        profile="p",
        uptime_s=10.0,
        latency_bucket_bounds_s=LATENCY_BUCKETS_S,
        tasks={
            "unspecified": TaskCounters(task="unspecified", rpcs_by_code={"OK": 3}),
            "search": TaskCounters(
                task="search", rpcs_by_code={"OK": 5}, has_reference=True, drift_samples=7
            ),
        },
    )
    text = format_views(stats, summarize(stats), None)
    rows = [line.split()[0] for line in text.splitlines()[2:4]]
    assert sorted(rows) == ["(no", "search"] and "unspecified" not in text
    assert "(no use-case): calls that name no use-case (GetModelInfo" in text
    assert "n=7" in text and "n=K: only K scores in the window so far" in text
