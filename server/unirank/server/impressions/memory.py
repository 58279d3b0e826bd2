"""The in-process impression store: LRU with per-impression expiry, bounded in bytes."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from unirank.server.cache import MemoryUsage, TTLCache
from unirank.server.impressions.base import Impression


class InMemoryImpressionStore:
    """Impressions of this replica only. ``max_ttl_s`` is the longest attribution window (every
    entry also carries its own use-case's expiry); past ``max_bytes`` the least recently used go."""

    name = "memory"
    inline = True

    def __init__(
        self,
        max_bytes: int,
        max_ttl_s: float,
        event_id_window: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._impressions = TTLCache[Impression](
            max_entries=10**12, ttl_s=max_ttl_s, max_bytes=max_bytes, size_of=_impression_bytes
        )
        self._event_ids: OrderedDict[str, None] = OrderedDict()
        self._event_id_window = event_id_window

    async def put(self, impression_id: str, impression: Impression) -> None:
        self._impressions.put(impression_id, impression)

    async def get_many(self, impression_ids: Sequence[str]) -> dict[str, Impression]:
        now_ms = self._clock() * 1000
        found = {}
        for impression_id in impression_ids:
            impression = self._impressions.get(impression_id)
            if impression is not None and impression.expires_ms > now_ms:
                found[impression_id] = impression
        return found

    async def claim(self, event_ids: Sequence[str], ttl_ms: int) -> list[bool]:
        fresh = []
        for event_id in event_ids:
            new = event_id not in self._event_ids
            self._event_ids[event_id] = None
            fresh.append(new)
        while len(self._event_ids) > self._event_id_window:
            self._event_ids.popitem(last=False)
        return fresh

    def usage(self) -> MemoryUsage:
        return self._impressions.usage()

    async def close(self) -> None:
        self._impressions.clear()
        self._event_ids.clear()


_STR_BYTES = 49  # sys.getsizeof("") on CPython 3.11
_TUPLE_BYTES = 40  # sys.getsizeof(()) on CPython 3.11
_RECORD_BYTES = 120  # the frozen dataclass instance and its two ints


def _impression_bytes(impression: Impression) -> int:
    """Estimated size of an impression: strings by length (ASCII ids), no per-field getsizeof."""
    strings = (impression.task, impression.model_version, impression.profile, impression.arm,
               impression.user_id)  # fmt: skip
    items = impression.items
    return (
        _RECORD_BYTES
        + _TUPLE_BYTES
        + 8 * len(items)
        + _STR_BYTES * (len(strings) + len(items))
        + sum(map(len, strings))
        + sum(map(len, items))
    )
