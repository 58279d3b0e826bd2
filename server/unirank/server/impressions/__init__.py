"""The impression store and KPI attribution: what each answer showed, and the feedback it earned."""

from __future__ import annotations

import os

from unirank.server.config import Profile
from unirank.server.impressions.base import (
    Feedback,
    Impression,
    ImpressionStore,
    ImpressionStoreError,
    new_impression_id,
)
from unirank.server.impressions.memory import InMemoryImpressionStore
from unirank.server.impressions.tracker import ImpressionTracker

__all__ = [
    "Feedback",
    "Impression",
    "ImpressionStore",
    "ImpressionStoreError",
    "ImpressionTracker",
    "InMemoryImpressionStore",
    "make_impression_store",
    "new_impression_id",
]


def make_impression_store(profile: Profile) -> ImpressionStore | None:
    """The profile's ``[impressions]`` store; the redis client is imported only when asked for."""
    section = profile.impressions
    if section.store == "none":
        return None
    max_window_s = max(task.kpi.attribution_window_s for task in profile.tasks.values())
    if section.store == "memory":
        return InMemoryImpressionStore(section.max_bytes, max_window_s, section.event_id_window)
    from unirank.server.impressions.redis_store import RedisImpressionStore

    url = os.environ.get("UNIRANK_REDIS_URL", section.redis_url)
    return RedisImpressionStore(url, timeout_s=section.timeout_ms / 1000.0)
