"""Redis-backed impression store, shared by every replica: feedback often reaches another replica
than the one that answered. One string key per impression (its JSON, expiring with its
attribution window) and one per counted event id (SET NX, expiring with the window)."""

from __future__ import annotations

from collections.abc import Sequence

from unirank.server.impressions.base import Impression, ImpressionStoreError

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "the redis impression store needs the redis package: pip install 'unirank[redis]'"
    ) from exc

UNAVAILABLE = "the impression store (redis) is unavailable"


class RedisImpressionStore:
    name = "redis"
    inline = False

    def __init__(self, url: str, timeout_s: float = 0.03, key_prefix: str = "unirank:") -> None:
        self._impression_prefix = f"{key_prefix}impression:"
        self._event_prefix = f"{key_prefix}attributed-event:"
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
        )

    async def put(self, impression_id: str, impression: Impression) -> None:
        ttl_ms = max(1, impression.expires_ms - impression.time_ms)
        try:
            await self._client.set(self._impression_prefix + impression_id, impression.to_json(), px=ttl_ms)
        except (RedisError, OSError) as exc:
            raise ImpressionStoreError(UNAVAILABLE, f"redis impression write failed: {exc}") from exc

    async def get_many(self, impression_ids: Sequence[str]) -> dict[str, Impression]:
        if not impression_ids:
            return {}
        try:
            values = await self._client.mget([self._impression_prefix + i for i in impression_ids])
        except (RedisError, OSError) as exc:
            raise ImpressionStoreError(UNAVAILABLE, f"redis impression read failed: {exc}") from exc
        return {
            impression_id: Impression.from_json(value)
            for impression_id, value in zip(impression_ids, values, strict=True)
            if value is not None
        }

    async def claim(self, event_ids: Sequence[str], ttl_ms: int) -> list[bool]:
        if not event_ids:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for event_id in event_ids:
                    pipe.set(self._event_prefix + event_id, b"1", nx=True, px=max(1, ttl_ms))
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ImpressionStoreError(UNAVAILABLE, f"redis event-id claim failed: {exc}") from exc
        return [bool(result) for result in results]

    async def close(self) -> None:
        await self._client.aclose()
