"""The online feature store: each user's recent engagements, read by the pipeline per request."""

import os
from collections.abc import Callable

from unirank.server.cache import MemoryUsage
from unirank.server.config import FeaturesSection
from unirank.server.online_store.base import FeatureStore, FeatureStoreError, RecentEvent
from unirank.server.online_store.eventlog import EventLog, LoggedFeatureStore
from unirank.server.online_store.memory import InMemoryFeatureStore

__all__ = [
    "EventLog",
    "FeatureStore",
    "FeatureStoreError",
    "InMemoryFeatureStore",
    "LoggedFeatureStore",
    "RecentEvent",
    "make_feature_store",
    "memory_usage",
]


def make_feature_store(section: FeaturesSection) -> FeatureStore | None:
    """The profile's store, wrapped to append to ``event_log`` when the profile names one; the
    redis client is imported only when the profile asks for it."""
    store = _make_store(section)
    if section.event_log:
        return LoggedFeatureStore(store, EventLog(section.event_log), event_id_window=section.event_id_window)
    return store


def memory_usage(store: FeatureStore | None) -> Callable[[], MemoryUsage] | None:
    """How to read the size of ``store`` when it holds its data in this process (else None)."""
    inner = store.inner if isinstance(store, LoggedFeatureStore) else store
    return inner.usage if isinstance(inner, InMemoryFeatureStore) else None


def _make_store(section: FeaturesSection) -> FeatureStore | None:
    if section.store == "none":
        return None
    if section.store == "memory":
        return InMemoryFeatureStore(
            section.max_items_per_user, max_bytes=section.max_bytes, ttl_s=section.ttl_s
        )
    from unirank.server.online_store.redis_store import RedisFeatureStore

    url = os.environ.get("UNIRANK_REDIS_URL", section.redis_url)
    return RedisFeatureStore(
        url, section.max_items_per_user, ttl_s=section.ttl_s, timeout_s=section.timeout_ms / 1000.0
    )
