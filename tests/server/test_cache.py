"""The response cache: hit on repeat, expiry after the TTL, LRU eviction."""

from __future__ import annotations

from unirank.server.cache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_hit_then_expiry_after_ttl() -> None:
    clock = Clock()
    cache: TTLCache[str] = TTLCache(10, ttl_s=5.0, clock=clock)
    cache.put("k", "v")
    clock.now += 4.9
    assert cache.get("k") == "v"
    clock.now += 0.2
    assert cache.get("k") is None
    assert (cache.hits, cache.misses) == (1, 1)
    assert len(cache) == 0


def test_least_recently_used_is_evicted() -> None:
    cache: TTLCache[int] = TTLCache(2, ttl_s=60.0, clock=Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3
