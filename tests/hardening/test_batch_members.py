"""RecommendBatch is admitted member by member (one execution slot each, as if each were a call of
its own), and a member that cannot be served gets its own status while the others are answered
(issue 13, finding 11)."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from typing import Any

import pytest

from unirank.artifact import load_artifact
from unirank.client import (
    AsyncRecommenderClient,
    BatchMemberError,
    Category,
    RecommendationRequest,
    RecommenderClient,
    RelatedItems,
    Search,
    UniRankError,
)
from unirank.v1 import recommender_pb2 as pb

from ..conftest import TASK_NAMES, known_query, profile_with, running_server
from .test_overload import _SlowBackend

LIMIT = 4


async def test_a_batch_takes_one_slot_per_member_and_the_rest_are_refused_alone(
    artifact_dir: Path,
) -> None:
    tasks = {name: {"timeout_ms": 10_000} for name in TASK_NAMES}
    profile = profile_with(
        server={"max_concurrent_rpcs": LIMIT, "max_queued_rpcs": 0, "max_batch_requests": 64}, tasks=tasks
    )
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address, timeout=10, throttle_k=None) as client,
    ):
        pipeline = server.pipeline
        assert pipeline is not None
        backend = _SlowBackend(pipeline.runtime.backend, service_s=0.05)  # members pile up
        pipeline.runtime.backend = backend  # type: ignore[assignment]
        items = pipeline.runtime.artifact.catalog.items
        batch = [
            RecommendationRequest(RelatedItems(items.key(1 + i % 50)), request_id=f"r{i}") for i in range(64)
        ]
        outcomes = await client.recommend_batch_outcomes(batch)
        with pytest.raises(BatchMemberError) as raised:
            await client.recommend_batch(batch)
        pipeline.runtime.backend = backend.inner
        assert server.admission.in_flight == 0

    assert backend.peak <= LIMIT  # never more members in the model than there are slots
    answered = [o for o in outcomes if not isinstance(o, UniRankError)]
    refused = [o for o in outcomes if isinstance(o, UniRankError)]
    assert len(answered) == LIMIT and len(refused) == 64 - LIMIT
    assert [o.request_id for o in answered] == [f"r{i}" for i in range(LIMIT)]  # request order kept
    assert all(o.items for o in answered)
    assert all(
        e.code == "RESOURCE_EXHAUSTED" and e.reason == "OVERLOADED" and e.retry_after_s for e in refused
    )
    error = raised.value
    assert error.code == "RESOURCE_EXHAUSTED" and "60 of 64 batch members failed" in error.message
    assert len(error.results) == 64 and sum(not isinstance(r, UniRankError) for r in error.results) == LIMIT
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, BatchMemberError) and again.code == error.code and len(again.results) == 64


async def test_a_member_that_fails_does_not_fail_the_others(artifact_dir: Path) -> None:
    query = known_query(load_artifact(artifact_dir))
    strict = {"timeout_ms": 10_000, "fallback": {"strategy": "error"}}
    profile = profile_with(tasks={"category": strict, "search": {"timeout_ms": 10_000}})
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address, timeout=10) as client,
    ):
        batch = [
            RecommendationRequest(Search(query)),
            RecommendationRequest(Category("no-such-category")),  # error fallback: NOT_FOUND
            RecommendationRequest(Search(query)),
        ]
        first, unknown, last = await client.recommend_batch_outcomes(batch)
        # An answer without member statuses is what an old client reads: unchanged on the wire.
        async with server_channel(server.address) as stub:
            raw = await stub.RecommendBatch(pb.RecommendBatchRequest(requests=[_search(query)] * 2))
    assert not isinstance(first, UniRankError) and first.items
    assert not isinstance(last, UniRankError) and last.items
    assert isinstance(unknown, UniRankError) and unknown.code == "NOT_FOUND"
    assert unknown.reason == "UNKNOWN_ENTITY" and "category" in unknown.message
    assert len(raw.responses) == 2 and not raw.statuses


def test_the_blocking_client_surfaces_member_errors_too(artifact_dir: Path) -> None:
    strict = {"timeout_ms": 10_000, "fallback": {"strategy": "error"}}

    async def serve_and_call() -> list[Any]:
        async with running_server(profile_with(tasks={"category": strict}), artifact_dir) as server:
            item = server.pipeline.runtime.artifact.catalog.items.key(1)
            batch = [RecommendationRequest(RelatedItems(item)), RecommendationRequest(Category("nope"))]

            def call() -> list[Any]:
                with RecommenderClient(server.address, timeout=10) as client:
                    with pytest.raises(BatchMemberError) as raised:
                        client.recommend_batch(batch)
                    return raised.value.results

            return await asyncio.to_thread(call)

    ranking, error = asyncio.run(serve_and_call())
    assert not isinstance(ranking, UniRankError) and ranking.items
    assert isinstance(error, UniRankError) and error.code == "NOT_FOUND"


def _search(query: str) -> pb.RecommendRequest:
    request = pb.RecommendRequest()
    request.context.search.query = query
    return request


class server_channel:
    """A raw stub over a plain grpc.aio channel: what a client built before member statuses sees."""

    def __init__(self, address: str) -> None:
        import grpc

        from unirank.v1 import recommender_pb2_grpc as pb_grpc

        self._channel = grpc.aio.insecure_channel(address)
        self._stub = pb_grpc.RecommenderServiceStub(self._channel)

    async def __aenter__(self) -> Any:
        return self._stub

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()
