"""Redis-backed feature store, shared by every replica of a profile.

One sorted set per user (member = item id, score = event time), trimmed to the newest
``max_items_per_user`` and expiring ``ttl_s`` after the last write.
"""

from __future__ import annotations

from collections.abc import Sequence

from unirank.server.online_store.base import FeatureStoreError, RecentEvent

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "the redis feature store needs the redis package: pip install 'unirank[redis]'"
    ) from exc


UNAVAILABLE = "the online feature store (redis) is unavailable"
"""What a caller is told; the error itself names the server's address and stays in the log."""


class RedisFeatureStore:
    name = "redis"
    inline = False

    def __init__(
        self,
        url: str,
        max_items_per_user: int = 50,
        ttl_s: float = 7 * 86_400,
        timeout_s: float = 0.05,
        key_prefix: str = "unirank:recent:",
    ) -> None:
        self.max_items_per_user = max_items_per_user
        self.ttl_s = ttl_s
        self.key_prefix = key_prefix
        # Short socket timeouts: a slow store must degrade a request, never stall it.
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            decode_responses=True,
        )

    def _key(self, user_id: str) -> str:
        return f"{self.key_prefix}{user_id}"

    async def append(self, events: Sequence[RecentEvent]) -> None:
        by_user: dict[str, dict[str, int]] = {}
        for event in events:
            items = by_user.setdefault(event.user_id, {})
            items[event.item_id] = max(items.get(event.item_id, 0), event.event_time_ms)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for user_id, items in by_user.items():
                    key = self._key(user_id)
                    pipe.zadd(key, items, gt=True)  # gt: a late, older event never moves an item back
                    pipe.zadd(key, items, nx=True)  # nx: new items are added
                    pipe.zremrangebyrank(key, 0, -self.max_items_per_user - 1)
                    pipe.expire(key, int(self.ttl_s))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise FeatureStoreError(UNAVAILABLE, f"redis append failed: {exc}") from exc

    async def recent(self, user_id: str, limit: int, since_ms: int) -> list[str]:
        if limit <= 0:
            return []
        try:
            found = await self._client.zrangebyscore(
                self._key(user_id), since_ms, "+inf", start=0, num=self.max_items_per_user
            )
        except (RedisError, OSError) as exc:
            raise FeatureStoreError(UNAVAILABLE, f"redis read failed: {exc}") from exc
        return [str(item) for item in found[-limit:]]

    async def close(self) -> None:
        await self._client.aclose()
