"""Every row of the error table, driven through a real server and decoded by the real client."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unirank.artifact import ModelInputs, load_artifact
from unirank.client import AsyncRecommenderClient, Event, UniRankError
from unirank.client.rollout import RolloutClient
from unirank.server.backends.base import BackendError
from unirank.server.errors import ERROR_TABLE, ServingError
from unirank.server.online_store import FeatureStoreError

from ..conftest import known_query, profile_with, running_server


class _FaultyBackend:
    """Stands in for the model: raises, hangs, or delegates."""

    name = "faulty"
    device = "cpu"
    inline = False

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner, self.mode = inner, mode

    async def score(
        self, inputs: ModelInputs, deadline: float | None = None, *, tag: Hashable = None
    ) -> np.ndarray:
        if self.mode == "raise":
            raise BackendError("injected failure")
        if self.mode == "hang":
            await asyncio.sleep(30)
        return await self.inner.score(inputs, deadline, tag=tag)

    async def start(self) -> None: ...

    async def close(self) -> None:
        await self.inner.close()


class _BrokenStore:
    """A feature store whose backend is gone."""

    name = "broken"
    inline = False

    async def append(self, events: Any) -> None:
        raise FeatureStoreError("injected: store unreachable")

    async def recent(self, user_id: str, limit: int, since_ms: int) -> list[str]:
        raise FeatureStoreError("injected: store unreachable")

    async def close(self) -> None: ...


async def _expect(client: AsyncRecommenderClient, call: Any) -> UniRankError:
    with pytest.raises(UniRankError) as error:
        await call(client)
    return error.value


async def test_every_row_of_the_error_table(artifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    query = known_query(load_artifact(artifact_dir))
    seen: dict[str, UniRankError] = {}
    strict = {"fallback": {"strategy": "error", "on_deadline": False, "on_backend_error": False}}
    profile = profile_with(tasks={"search": strict, "category": strict})
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        seen["InvalidArgument"] = await _expect(client, lambda c: c.search(""))
        seen["UnknownEntity"] = await _expect(client, lambda c: c.category("no-such-category"))
        pipeline = server.pipeline
        assert pipeline is not None
        real = pipeline.runtime.backend
        pipeline.runtime.backend = _FaultyBackend(real, "raise")
        seen["ModelUnavailable"] = await _expect(client, lambda c: c.search(query))
        pipeline.runtime.backend = _FaultyBackend(real, "hang")
        seen["DeadlineExceeded"] = await _expect(client, lambda c: c.search(query))
        pipeline.runtime.backend = real
        server.admission.max_in_flight = 0
        seen["Overloaded"] = await _expect(client, lambda c: c.search(query))
        server.admission.max_in_flight = 10
        server.admission.draining = True
        seen["Draining"] = await _expect(client, lambda c: c.search(query))
        server.admission.draining = False
        pipeline._features = _BrokenStore()
        user, item = (
            pipeline.runtime.artifact.catalog.users.key(1),
            pipeline.runtime.artifact.catalog.items.key(1),
        )
        seen["FeatureStoreUnavailable"] = await _expect(
            client, lambda c: c.record_events([Event(user, item)])
        )
        with RolloutClient(server.address) as rollouts, pytest.raises(UniRankError) as refused:
            await asyncio.to_thread(rollouts.promote)  # rollouts are off in this profile
        seen["RolloutRefused"] = refused.value
    full, limited = "token-for-everything-0001", "token-for-recommend-0002"
    monkeypatch.setenv("UNIRANK_TEST_TOKENS", f"full:{full},limited:{limited}")
    security = {
        "auth": "bearer",
        "tokens_env": "UNIRANK_TEST_TOKENS",
        "grants": {"limited": {"methods": ["Recommend"]}},
    }
    async with (
        running_server(profile_with("search-edge", security=security), artifact_dir) as server,
        AsyncRecommenderClient(server.address, bearer_token=full) as client,
        AsyncRecommenderClient(server.address) as anonymous,
        AsyncRecommenderClient(server.address, bearer_token=limited) as limited_client,
    ):
        seen["TaskNotServed"] = await _expect(client, lambda c: c.notification("u1"))
        seen["Unauthenticated"] = await _expect(anonymous, lambda c: c.search(query))
        seen["PermissionDenied"] = await _expect(limited_client, lambda c: c.model_info())

    assert set(seen) == {cls.__name__ for cls in ERROR_TABLE}, "a row of the table is not exercised"
    for cls, code in ERROR_TABLE.items():
        error = seen[cls.__name__]
        assert error.code == code.name, (cls.__name__, error)
        assert error.reason == cls.reason
        assert error.code not in {"UNKNOWN", "INTERNAL"} or cls.code.name == "INTERNAL"
    assert seen["Overloaded"].retry_after_s is not None and seen["Overloaded"].retry_after_s > 0
    assert seen["Draining"].retry_after_s is not None


async def test_backend_failure_and_timeout_fall_back_when_configured(
    server_factory, artifact_dir: Path
) -> None:
    profile = profile_with(tasks={"notification": {"timeout_ms": 80}})
    async with server_factory(profile) as server, AsyncRecommenderClient(server.address) as client:
        pipeline = server.pipeline
        real = pipeline.runtime.backend
        pipeline.runtime.backend = _FaultyBackend(real, "raise")
        failed = await client.related_items(pipeline.runtime.artifact.catalog.items.key(3))
        pipeline.runtime.backend = _FaultyBackend(real, "hang")
        loop = asyncio.get_running_loop()
        started = loop.time()
        hung = await client.notification(pipeline.runtime.artifact.catalog.users.key(1))
        elapsed_ms = (loop.time() - started) * 1000
        pipeline.runtime.backend = real
    assert failed.fallback and failed.fallback_reason == "backend_error" and failed.items
    assert hung.fallback and hung.fallback_reason == "deadline" and hung.items
    # The fallback answered within the notification budget, not after the 30 s hang.
    assert elapsed_ms < 30_000


async def test_unexpected_exception_is_internal_not_unknown(server_factory) -> None:
    async with server_factory() as server, AsyncRecommenderClient(server.address) as client:
        pipeline = server.pipeline

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret detail")

        pipeline.recommend = broken  # type: ignore[method-assign]
        error = await _expect(client, lambda c: c.search("anything"))
    assert error.code == "INTERNAL"
    assert "secret detail" not in error.message


def test_table_covers_every_serving_error() -> None:
    def subclasses(cls: type) -> set[type]:
        return {s for c in cls.__subclasses__() for s in {c, *subclasses(c)}}

    assert subclasses(ServingError) == set(ERROR_TABLE)
