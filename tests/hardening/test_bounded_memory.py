"""Issue 13, finding 7: the response caches and the in-process feature store are bounded in bytes
from the profile, evict by time-to-live and least recent use, and export their sizes."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unirank.artifact import TaskType, load_artifact
from unirank.client import AsyncRecommenderClient
from unirank.server.cache import TTLCache
from unirank.server.domain import RankedItem, RankResponse, Source
from unirank.server.online_store import InMemoryFeatureStore, RecentEvent

from ..conftest import known_query, profile_with
from ..telemetry.conftest import traced_server


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _response(n: int, salt: int) -> RankResponse:
    # Fresh strings per answer, as decoding and ranking make them: the costly case.
    items = [
        RankedItem(
            f"item-{salt}-{k:04d}", 0.5 + k, f"A title of item {salt} {k}", f"cat-{k % 7}", Source.LEXICAL
        )
        for k in range(n)
    ]
    return RankResponse(f"req-{salt}", TaskType.SEARCH, items, "v1", "cpu-realtime")


def _traced_growth(fill: Callable[[], Any]) -> tuple[Any, int]:
    """What ``fill`` returns and the memory it still holds afterwards (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()
        gc.collect()
        return kept, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_the_response_cache_holds_no_more_than_its_bytes() -> None:
    max_bytes = 2 * 1024 * 1024

    def fill() -> TTLCache[RankResponse]:
        cache: TTLCache[RankResponse] = TTLCache(1_000_000, ttl_s=60.0, max_bytes=max_bytes)
        for n in range(2_000):  # ~25 MB of 100-item answers offered
            cache.put(("v1", 0, None, f"key-{n}"), _response(100, n))
        return cache

    cache, held = _traced_growth(fill)
    usage = cache.usage()
    assert usage.bytes <= max_bytes and held <= max_bytes * 1.05
    assert held >= max_bytes * 0.5  # the estimate is not wildly high either
    assert 0 < usage.entries < 2_000 and usage.evicted == 2_000 - usage.entries
    assert cache.get(("v1", 0, None, "key-1999")) is not None  # the most recent stay
    assert cache.get(("v1", 0, None, "key-0")) is None  # the least recent went first


def test_cached_answers_expire_by_their_time_to_live() -> None:
    clock = Clock()
    cache: TTLCache[RankResponse] = TTLCache(100, ttl_s=10.0, max_bytes=1024 * 1024, clock=clock)
    cache.put("a", _response(3, 0))
    clock.now = 5.0
    cache.put("b", _response(3, 1))
    assert cache.get("a") is not None  # a read does not extend a life
    clock.now = 12.0
    cache.put("c", _response(3, 2))  # every put drops what is due
    assert len(cache) == 2 and cache.usage().expired == 1
    assert cache.get("a") is None and cache.get("b") is not None
    clock.now = 16.0
    assert cache.get("b") is None and cache.usage().expired == 2
    cache.clear()
    assert cache.usage().bytes == 0


def test_the_feature_store_is_bounded_in_bytes_and_forgets_users_after_its_ttl() -> None:
    max_bytes, clock = 512 * 1024, Clock()

    def fill() -> InMemoryFeatureStore:
        store = InMemoryFeatureStore(50, max_bytes=max_bytes, ttl_s=100.0, clock=clock)

        async def write() -> None:
            for user in range(1_000):  # ~6 MB of users offered
                await store.append(
                    [RecentEvent(f"user-{user:05d}", f"item-{user}-{k}", 1_000 + k) for k in range(50)]
                )

        asyncio.run(write())
        return store

    store, held = _traced_growth(fill)
    usage = store.usage()
    assert usage.bytes <= max_bytes and held <= max_bytes * 1.05
    assert 0 < usage.entries < 1_000 and usage.evicted == 1_000 - usage.entries

    async def check() -> None:
        assert await store.recent("user-00000", 50, 0) == []  # written to least recently: evicted
        assert len(await store.recent("user-00999", 50, 0)) == 50
        clock.now = 100.0  # the time-to-live after the last write
        assert await store.recent("user-00999", 50, 0) == []
        await store.append([RecentEvent("late", "i", 1)])
        assert store.usage().entries == 1 and store.usage().expired == usage.entries

    asyncio.run(check())


async def test_a_server_exports_its_cache_and_store_sizes_within_the_profiles_bounds(
    artifact_dir: Path,
) -> None:
    max_bytes = 256 * 1024
    profile = profile_with(
        tasks={"search": {"timeout_ms": 10_000, "cache": {"enabled": True, "max_bytes": max_bytes}}},
        features={"max_bytes": 1024 * 1024},
    )
    artifact = load_artifact(artifact_dir)
    query = known_query(artifact)
    async with (
        traced_server(profile, artifact_dir) as (server, captured),
        AsyncRecommenderClient(server.address, timeout=10) as client,
    ):
        for n in range(150):  # distinct answers (the user is part of the key) of up to 100 items
            ranking = await client.search(query, user_id=f"u{n}", max_results=100)
            assert not ranking.fallback
        cache = {"unirank.memory.store": "response_cache", "unirank.task_type": "search"}
        held = captured.value("unirank.memory.bytes", **cache)
        entries = captured.value("unirank.memory.entries", **cache)
        evicted = captured.value(
            "unirank.memory.evictions", **cache, **{"unirank.memory.eviction_reason": "capacity"}
        )
        store = captured.value("unirank.memory.entries", **{"unirank.memory.store": "feature_store"})
    assert 0 < held <= max_bytes
    assert 0 < entries < 150 and evicted == 150 - entries
    assert store == 0  # the feature store is watched too (no events recorded here)
