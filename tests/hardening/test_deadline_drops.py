"""A request the batcher drops at its deadline is overload, not a broken model: it is answered as
a deadline (fallback reason ``deadline``, or DEADLINE_EXCEEDED where the use-case's fallback is
``error``), never as a backend error (issue 13, finding 5)."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unirank.artifact import ModelInputs
from unirank.client import AsyncRecommenderClient, UniRankError
from unirank.server.batching import DynamicBatcher

from ..conftest import profile_with, running_server


class _LateBackend:
    """The real model behind a real batcher that only ever sees requests whose deadline has
    passed by the time it would form their batch (what an overloaded loop does to them)."""

    name, device, inline = "late", "cpu", False

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batcher: DynamicBatcher[ModelInputs, np.ndarray] = DynamicBatcher(
            self._handle, max_batch_size=4, max_queue_delay_ms=0.0, max_queue_size=8
        )

    async def _handle(self, items: list[ModelInputs]) -> list[np.ndarray]:
        return [await self.inner.score(inputs) for inputs in items]

    async def score(
        self, inputs: ModelInputs, deadline: float | None = None, *, tag: Hashable = None
    ) -> np.ndarray:
        return await self.batcher.submit(inputs, deadline=0.0, request_id=tag)

    async def start(self) -> None: ...

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.parametrize("strategy", ["popular_in_category", "error"])
async def test_a_deadline_drop_is_answered_as_a_deadline(artifact_dir: Path, strategy: str) -> None:
    profile = profile_with(
        tasks={"related_items": {"timeout_ms": 10_000, "fallback": {"strategy": strategy}}}
    )
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address, timeout=10) as client,
    ):
        pipeline = server.pipeline
        assert pipeline is not None
        late = _LateBackend(pipeline.runtime.backend)
        pipeline.runtime.backend = late  # type: ignore[assignment]
        item = pipeline.runtime.artifact.catalog.items.key(3)
        if strategy == "error":
            with pytest.raises(UniRankError) as refused:
                await client.related_items(item)
            assert refused.value.code == "DEADLINE_EXCEEDED", refused.value
        else:
            ranking = await client.related_items(item)
            assert ranking.fallback and ranking.fallback_reason == "deadline", ranking
        stats = server.telemetry.stats.task("related_items")
        pipeline.runtime.backend = late.inner
    assert late.batcher.stats().deadline_dropped == 1
    assert "backend_error" not in stats.fallbacks
    assert "INTERNAL" not in stats.rpcs_by_code()
