"""In-process feature store: right for one replica (state dies with the process)."""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from unirank.server.cache import MemoryUsage
from unirank.server.online_store.base import RecentEvent

USER_OVERHEAD_BYTES = 330
"""A user's cost beyond its id and items: its slot in the LRU order, its record and its item table."""
ITEM_OVERHEAD_BYTES = 80
"""An item's cost beyond its id: its slot in the user's table and its event time."""


class _User:
    __slots__ = ("bytes", "items", "written_at")

    def __init__(self, user_id: str, written_at: float) -> None:
        self.items: dict[str, int] = {}
        self.written_at = written_at
        self.bytes = USER_OVERHEAD_BYTES + sys.getsizeof(user_id)


class InMemoryFeatureStore:
    """Per-user latest engagement time per item: at most ``max_items_per_user`` items per user, a
    user forgotten ``ttl_s`` after their last write, and about ``max_bytes`` in all (ids and
    bookkeeping, estimated as they are stored), the users written to least recently evicted first.
    """

    name = "memory"
    inline = True

    def __init__(
        self,
        max_items_per_user: int = 50,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        ttl_s: float = 7 * 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_items_per_user < 1 or max_bytes < 1 or ttl_s <= 0:
            raise ValueError("max_items_per_user and max_bytes must be >= 1 and ttl_s > 0")
        self.max_items_per_user = max_items_per_user
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._users: OrderedDict[str, _User] = OrderedDict()  # least recently written first
        self.bytes = 0
        self.expired = 0
        self.evicted = 0

    async def append(self, events: Sequence[RecentEvent]) -> None:
        now = self._clock()
        for event in events:
            user = self._users.get(event.user_id)
            if user is None:
                user = self._users[event.user_id] = _User(event.user_id, now)
                self.bytes += user.bytes
            else:
                user.written_at = now
                self._users.move_to_end(event.user_id)
            items = user.items
            previous = items.get(event.item_id)
            if previous is None:
                self._resize(user, ITEM_OVERHEAD_BYTES + sys.getsizeof(event.item_id))
                items[event.item_id] = event.event_time_ms
            elif event.event_time_ms > previous:  # a late, older event never moves an item back in time
                items[event.item_id] = event.event_time_ms
            if len(items) > self.max_items_per_user:
                oldest = min(items, key=items.__getitem__)
                del items[oldest]
                self._resize(user, -(ITEM_OVERHEAD_BYTES + sys.getsizeof(oldest)))
        self._expire(now)
        while self.bytes > self.max_bytes and len(self._users) > 1:
            self._forget(next(iter(self._users)))
            self.evicted += 1

    def _resize(self, user: _User, delta: int) -> None:
        user.bytes += delta
        self.bytes += delta

    def _forget(self, user_id: str) -> None:
        self.bytes -= self._users.pop(user_id).bytes

    def _expire(self, now: float) -> None:
        while self._users:
            user_id, user = next(iter(self._users.items()))
            if now - user.written_at < self.ttl_s:
                return
            self._forget(user_id)
            self.expired += 1

    async def recent(self, user_id: str, limit: int, since_ms: int) -> list[str]:
        user = self._users.get(user_id)
        if user is None or limit <= 0:
            return []
        if self._clock() - user.written_at >= self.ttl_s:
            self._forget(user_id)
            self.expired += 1
            return []
        fresh = sorted((t, item) for item, t in user.items.items() if t >= since_ms)
        return [item for _, item in fresh[-limit:]]

    def usage(self) -> MemoryUsage:
        return MemoryUsage(self.bytes, len(self._users), self.expired, self.evicted)

    async def close(self) -> None:
        self._users.clear()
        self.bytes = 0
