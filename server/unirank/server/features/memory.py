"""In-process feature store: right for one replica (state dies with the process)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from unirank.server.features.base import RecentEvent


class InMemoryFeatureStore:
    """Per-user latest engagement time per item, bounded per user and LRU-bounded over users."""

    name = "memory"
    inline = True

    def __init__(self, max_items_per_user: int = 50, max_users: int = 1_000_000) -> None:
        if max_items_per_user < 1 or max_users < 1:
            raise ValueError("max_items_per_user and max_users must be >= 1")
        self.max_items_per_user = max_items_per_user
        self.max_users = max_users
        self._users: OrderedDict[str, dict[str, int]] = OrderedDict()

    async def append(self, events: Sequence[RecentEvent]) -> None:
        for event in events:
            items = self._users.get(event.user_id)
            if items is None:
                items = self._users[event.user_id] = {}
            self._users.move_to_end(event.user_id)
            # A late, older event never moves an item back in time.
            items[event.item_id] = max(items.get(event.item_id, event.event_time_ms), event.event_time_ms)
            if len(items) > self.max_items_per_user:
                del items[min(items, key=items.__getitem__)]
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)

    async def recent(self, user_id: str, limit: int, since_ms: int) -> list[str]:
        items = self._users.get(user_id)
        if not items or limit <= 0:
            return []
        fresh = sorted((t, item) for item, t in items.items() if t >= since_ms)
        return [item for _, item in fresh[-limit:]]

    async def close(self) -> None:
        self._users.clear()
