"""The contract of an online feature store backend."""

from __future__ import annotations

from collections import OrderedDict
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
    event_id: str = ""
    """The caller's id of the event; a repeated id is a retry (empty: never deduplicated)."""


class RecentIds:
    """The most recent ``capacity`` event ids: the window in which a retried event is recognised."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def new(self, events: Sequence[RecentEvent]) -> list[RecentEvent]:
        """``events`` less those whose id is in the window or repeats an earlier one of ``events``."""
        if not any(event.event_id for event in events):
            return list(events)
        seen: set[str] = set()
        fresh = []
        for event in events:
            if event.event_id:
                if event.event_id in self._ids or event.event_id in seen:
                    continue
                seen.add(event.event_id)
            fresh.append(event)
        return fresh

    def add(self, events: Sequence[RecentEvent]) -> None:
        """Remember the ids of ``events``; the oldest ids leave the window beyond ``capacity``."""
        for event in events:
            if event.event_id:
                self._ids[event.event_id] = None
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


class FeatureStoreError(Exception):
    """The store could not be reached or answered badly; the pipeline degrades without it.

    ``str()`` is what a caller may be told: it names no address, path or host. ``detail`` (the
    underlying error, with the address or path) is for the server's own log.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


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
