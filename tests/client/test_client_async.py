"""The asyncio client against a real grpc.aio server: the same contract as the blocking client."""

from __future__ import annotations

import pytest

from tests.client.client_echo_server import FAIL_INVALID, SLOW, RunningServer
from unirank.client import (
    DEFAULT_TIMEOUT_S,
    AsyncRecommenderClient,
    Notification,
    RankedItem,
    RecommendationRequest,
    UniRankError,
)
from unirank.v1 import recommender_pb2 as pb


def sent(server: RunningServer) -> pb.RecommendRequest:
    request = server.last.request
    assert isinstance(request, pb.RecommendRequest)
    return request


async def test_each_use_case_sends_its_oneof(server: RunningServer) -> None:
    async with AsyncRecommenderClient(server.target) as client:
        await client.notification("u1", history_item_ids=["h1"])
        assert sent(server).context.WhichOneof("task") == "notification"
        assert list(sent(server).context.history_item_ids) == ["h1"]

        await client.related_items("i1", user_id="u1")
        assert sent(server).context.related_items.anchor_item_id == "i1"

        await client.search("space", user_id="u1")
        assert sent(server).context.search.query == "space"

        new = await client.new_releases("u1", window_years=2)
        assert sent(server).context.new_releases.window_years == 2
        assert new.task_type == "new_releases"

        ranking = await client.category(
            "c1", user_id="u1", candidate_item_ids=["a", "b"], max_results=1, debug=True
        )
        assert sent(server).context.category.category_id == "c1"
        assert sent(server).options == pb.RequestOptions(
            max_results=1, candidate_item_ids=["a", "b"], debug=True
        )
    assert ranking.task_type == "category"
    assert ranking.items == [RankedItem("a", 1.0, "Title of a", "c1", "caller")]
    assert ranking.timings == {"retrieve": 1.5, "score": 2.25}


async def test_batch_model_info_and_health(server: RunningServer) -> None:
    async with AsyncRecommenderClient(server.target) as client:
        rankings = await client.recommend_batch(
            [RecommendationRequest(task=Notification(), user_id="u1", request_id=str(i)) for i in range(3)]
        )
        info = await client.model_info()
        status = await client.health()
    assert [r.request_id for r in rankings] == ["0", "1", "2"]
    assert info.model_version == "test-model-7"
    assert status == "SERVING"


async def test_default_and_per_call_deadlines(server: RunningServer) -> None:
    async with AsyncRecommenderClient(server.target) as client:
        await client.notification("u1")
        default_remaining = server.last.time_remaining
        await client.notification("u1", timeout=20.0)
        per_call_remaining = server.last.time_remaining
    assert (
        default_remaining is not None
        and DEFAULT_TIMEOUT_S - 0.75 < default_remaining < DEFAULT_TIMEOUT_S + 0.25
    )
    assert per_call_remaining is not None and 19.25 < per_call_remaining < 20.25


async def test_errors_raise_unirank_error_with_details(server: RunningServer) -> None:
    async with AsyncRecommenderClient(server.target) as client:
        with pytest.raises(UniRankError) as raised:
            await client.search("", request_id=FAIL_INVALID)
        assert raised.value.code == "INVALID_ARGUMENT"
        assert ("context.search.query", "must not be empty") in raised.value.field_violations

        with pytest.raises(UniRankError) as slow:
            await client.notification("u1", request_id=SLOW, timeout=0.2)
        assert slow.value.code == "DEADLINE_EXCEEDED"


async def test_bearer_token_reaches_the_server(server: RunningServer) -> None:
    async with AsyncRecommenderClient(server.target, bearer_token="t0ken") as client:
        await client.model_info()
    assert server.last.metadata["authorization"] == "Bearer t0ken"
