"""The pieces behind the KPIs without a server: the in-process impression store's bounds, the
counters as GetServingStats answers them (and sums them over workers), the monitor's columns."""

from __future__ import annotations

import asyncio

from unirank.client.monitor import decode_stats, format_views, summarize
from unirank.server import codec
from unirank.server.impressions import Impression, InMemoryImpressionStore
from unirank.server.telemetry.kpi import KpiCounters
from unirank.server.telemetry.stats import ServingStats
from unirank.server.telemetry.workers import merge_stats


def _impression(n: int, expires_ms: int = 10**13) -> Impression:
    items = tuple(f"i{n:05d}-{k}" for k in range(10))
    return Impression("search", "v1", "p", "stable", items, f"u{n}", 0, expires_ms)


def test_the_in_process_store_is_bounded_in_bytes_and_expires_per_impression() -> None:
    now = [1000.0]
    store = InMemoryImpressionStore(64 * 1024, max_ttl_s=3600, event_id_window=3, clock=lambda: now[0])

    async def scenario() -> None:
        for n in range(500):
            await store.put(f"id{n}", _impression(n))
        usage = store.usage()
        assert 0 < usage.bytes <= 64 * 1024 and usage.evicted > 0 and usage.entries < 500
        found = await store.get_many(["id0", "id499"])
        assert list(found) == ["id499"]  # the least recently used went first
        await store.put("short", _impression(1, expires_ms=int(now[0] * 1000) + 500))
        assert "short" in await store.get_many(["short"])
        now[0] += 1.0  # past its own use-case's window, long before the store's longest one
        assert await store.get_many(["short"]) == {}
        assert await store.claim(["a", "b", "a"], 1000) == [True, True, False]
        assert await store.claim(["c", "d"], 1000) == [True, True]
        assert await store.claim(["a"], 1000) == [True]  # beyond the event-id window: forgotten

    asyncio.run(scenario())


def _stats(clicks: int) -> ServingStats:
    stats = ServingStats(drift_window=100, drift_min_samples=10)
    stats.task("search").rankings["model"] += 4
    for _ in range(4):
        stats.kpis.impression("search", "v1", "stable")
    for position in range(1, clicks + 1):
        stats.kpis.attributed("search", "v1", "stable", 2, position * 11, 3.0)
    stats.kpis.attributed("search", "v1", "stable", 6, 1, 60.0)
    stats.kpis.unattributable("duplicate")
    return stats


def test_serving_stats_carry_kpis_and_workers_add_them_up() -> None:
    own = codec.serving_stats_to_pb(_stats(clicks=2), "v1", "p")
    [kpi] = own.tasks[0].kpis
    assert (kpi.impressions, kpi.clicks, kpi.plays, kpi.engagement_seconds_sum) == (4, 2, 1, 66.0)
    assert kpi.click_positions[10] == 1 and kpi.click_positions[-1] == 1  # position 11, and 22 in 21+
    merged = merge_stats(own, [codec.serving_stats_to_pb(_stats(clicks=1), "v1", "p")], 10)
    [both] = merged.tasks[0].kpis
    assert (both.impressions, both.clicks, both.plays) == (8, 3, 2)
    assert both.click_positions[10] == 2
    assert dict(merged.unattributed_events_by_reason) == {"duplicate": 2}


def test_the_monitor_shows_ctr_play_rate_and_engagement() -> None:
    before = decode_stats(codec.serving_stats_to_pb(_stats(clicks=0), "v1", "p"))
    now = decode_stats(codec.serving_stats_to_pb(_stats(clicks=2), "v1", "p"))
    [view] = summarize(now)
    assert (view.impressions, view.ctr, view.play_rate, view.engagement_s) == (4, 0.5, 0.25, 16.5)
    text = format_views(now, [view], None)
    header, row = text.splitlines()[1:3]
    assert header.split()[-5:] == ["CTR", "play", "rate", "engage", "s"]
    assert row.split()[-3:] == ["50.0%", "25.0%", "16.5"]
    assert "unattributed events: duplicate=1" in text
    assert summarize(now, before) == []  # no answers in the interval: a quiet row, left out


def test_counters_of_old_model_versions_are_dropped() -> None:
    kpis = KpiCounters(max_versions=2)
    for version in ("v1", "v2", "v3"):
        kpis.impression("search", version, "stable")
        kpis.impression("category", version, "stable")
    assert sorted({version for (_, version, _), _ in kpis.items()}) == ["v2", "v3"]
    assert [version for version, _, _ in kpis.for_task("category")] == ["v2", "v3"]
