"""The contract of an online feature store backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RecentEvent:
    user_id: str
    item_id: str
    event_time_ms: int
    event_type: int = 0
    """``unirank.v1.EventType`` value (0: unspecified, logged as a play)."""


class FeatureStoreError(Exception):
    """The store could not be reached or answered badly; the pipeline degrades without it."""


class FeatureStore(Protocol):
    """Each user's most recent engaged items, newest last, bounded per user."""

    name: str

    @property
    def inline(self) -> bool:
        """``recent`` answers without suspending (an in-process store): no timer is set around it."""
        ...

    async def append(self, events: Sequence[RecentEvent]) -> None:
        """Add events (any users, any order); raises FeatureStoreError when unavailable."""
        ...

    async def recent(self, user_id: str, limit: int, since_ms: int) -> list[str]:
        """Up to ``limit`` item ids the user engaged with at or after ``since_ms``, oldest first."""
        ...

    async def close(self) -> None: ...
