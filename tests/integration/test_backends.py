"""The same artifact under every backend: same rankings; the batched profile batches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from unirank.artifact import TASKS, load_artifact
from unirank.client import AsyncRecommenderClient, Ranking
from unirank.client.domain import (
    Category,
    NewReleases,
    Notification,
    RecommendationRequest,
    RelatedItems,
    Search,
)

from ..conftest import known_query, profile_with, running_server


def _requests(artifact_dir: Path) -> list[RecommendationRequest]:
    artifact = load_artifact(artifact_dir)
    catalog, popular = artifact.catalog, artifact.retrieval.popular_items
    token = known_query(artifact)
    requests = []
    for i in range(4):
        item = catalog.items.key(int(popular[i * 3]))
        user = catalog.users.key(1 + i)
        requests += [
            RecommendationRequest(
                task=Notification(), user_id=user, history_item_ids=(item,), max_results=20
            ),
            RecommendationRequest(task=RelatedItems(anchor_item_id=item), max_results=20),
            RecommendationRequest(task=Search(query=token), user_id=user, max_results=20),
            RecommendationRequest(task=Category(category_id=catalog.categories.key(1 + i)), max_results=20),
            RecommendationRequest(task=NewReleases(), user_id=user, history_item_ids=(item,), max_results=20),
        ]
    return requests


async def _rank_all(address: str, requests: list[RecommendationRequest]) -> list[Ranking]:
    async with AsyncRecommenderClient(address, timeout=10) as client:
        return list(await asyncio.gather(*(client.recommend(r) for r in requests)))


async def test_onnxruntime_and_torch_batched_give_identical_top_k(artifact_dir: Path) -> None:
    requests = _requests(artifact_dir)
    # Same per-use-case pipeline on both; only the model section differs.
    relaxed = {spec.name: {"timeout_ms": 10_000} for spec in TASKS}
    batched = profile_with(
        "cpu-realtime",
        name="cpu-realtime-torch",
        model={"backend": "torch", "device": "cuda", "batching": {"enabled": True, "max_queue_delay_ms": 5}},
        server={"max_concurrent_rpcs": 256},  # batches need many calls in flight (as gpu-batched ships)
        tasks=relaxed,
    )
    async with running_server("cpu-realtime", artifact_dir) as onnx_server:
        onnx = await _rank_all(onnx_server.address, requests)
    async with running_server(batched, artifact_dir) as torch_server:
        torch_rankings = await _rank_all(torch_server.address, requests)
        runtime = torch_server.pipeline.runtime
        assert runtime.backend.name == "torch" and runtime.backend.device == "cpu"  # CUDA fell back
        stats = runtime.backend.batch_stats()
    assert stats.batches < stats.requests, "concurrent requests were never batched together"
    for a, b in zip(onnx, torch_rankings, strict=True):
        assert a.fallback == b.fallback
        assert [i.item_id for i in a.items] == [i.item_id for i in b.items], a.task_type
        for x, y in zip(a.items, b.items, strict=True):
            assert x.score == pytest.approx(y.score, abs=1e-4)


async def test_every_shipped_profile_starts_and_serves_its_use_cases(artifact_dir: Path) -> None:
    requests = _requests(artifact_dir)
    for name in ("cpu-realtime", "gpu-batched", "search-edge"):
        async with running_server(name, artifact_dir) as server:
            served = {spec for spec in server.profile.tasks}
            mine = [r for r in requests if _task_name(r) in served]
            rankings = await _rank_all(server.address, mine)
        assert {r.task_type for r in rankings} == served
        assert all(r.items and r.profile == name for r in rankings)


def _task_name(request: RecommendationRequest) -> str:
    return {
        Notification: "notification",
        RelatedItems: "related_items",
        Search: "search",
        Category: "category",
        NewReleases: "new_releases",
    }[type(request.task)]
