"""Every input limit answers INVALID_ARGUMENT with a BadRequest violation naming the field and the limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from unirank.client import AsyncRecommenderClient, RecommendationRequest, Search, UniRankError
from unirank.v1 import recommender_pb2 as pb

from ..conftest import TASK_NAMES, profile_with, running_server

TASKS = TASK_NAMES
LIMITS = {
    "max_candidate_ids": 50,
    "max_history_ids": 20,
    "max_excluded_ids": 30,
    "max_message_bytes": 64 * 1024,
}


def _request(**fields: object) -> pb.RecommendRequest:
    message = pb.RecommendRequest()
    message.context.search.query = "space"
    for path, value in fields.items():
        *parents, name = path.split("__")
        target: object = message
        for parent in parents:
            target = getattr(target, parent)
        if isinstance(value, list):
            getattr(target, name).extend(value)
        else:
            setattr(target, name, value)
    return message


def _ids(n: int) -> list[str]:
    return [f"i{k}" for k in range(n)]


CASES: list[tuple[str, pb.RecommendRequest, str, str]] = [
    # (case, request, violated field, text the description must contain)
    (
        "candidates",
        _request(options__candidate_item_ids=_ids(51)),
        "options.candidate_item_ids",
        "at most 50 allowed (server.max_candidate_ids)",
    ),
    (
        "history",
        _request(context__history_item_ids=_ids(21)),
        "context.history_item_ids",
        "at most 20 allowed (server.max_history_ids)",
    ),
    (
        "excluded",
        _request(options__excluded_item_ids=_ids(31)),
        "options.excluded_item_ids",
        "at most 30 allowed (server.max_excluded_ids)",
    ),
    ("max_results", _request(options__max_results=101), "options.max_results", "exceeds the limit 100"),
    (
        "message size",
        _request(context__device="x" * 70_000),
        "(request)",
        "limit of 65536 bytes (server.max_message_bytes)",
    ),
    ("query length", _request(context__search__query="q" * 513), "context.search.query", "longer than 512"),
    (
        "query control",
        _request(context__search__query="space\x00opera"),
        "context.search.query",
        "control characters",
    ),
    ("blank query", _request(context__search__query=" \t"), "context.search.query", "non-blank"),
    ("id length", _request(context__user_id="u" * 129), "context.user_id", "longer than 128"),
    ("id whitespace", _request(context__request_id="a b"), "context.request_id", "whitespace or control"),
    (
        "id format in list",
        _request(options__candidate_item_ids=["ok", "bad\u200bid"]),
        "options.candidate_item_ids[1]",
        "whitespace or control",
    ),
    (
        "empty id in list",
        _request(context__history_item_ids=["ok", ""]),
        "context.history_item_ids[1]",
        "is empty",
    ),
    ("short field control", _request(context__country="U\x07S"), "context.country", "control characters"),
    ("short field length", _request(context__language="l" * 65), "context.language", "longer than 64"),
    ("negative time", _request(context__event_time_unix_ms=-1), "context.event_time_unix_ms", ">= 0"),
]


@pytest.fixture
def limited_profile():  # type: ignore[no-untyped-def]
    return profile_with(server=LIMITS, tasks={name: {"timeout_ms": 10_000} for name in TASKS})


async def test_each_limit_names_its_field_and_bound(limited_profile, artifact_dir: Path) -> None:  # type: ignore[no-untyped-def]
    async with (
        running_server(limited_profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address, timeout=10) as client,
    ):
        for case, request, field, text in CASES:
            with pytest.raises(UniRankError) as error:
                await client.recommend(request)
            assert error.value.code == "INVALID_ARGUMENT", case
            described = dict(error.value.field_violations)
            assert field in described, (case, error.value.field_violations)
            assert text in described[field], (case, described[field])
        # A batch names the member and its field.
        batch: list[pb.RecommendRequest | RecommendationRequest] = [
            RecommendationRequest(Search("space")),
            _request(options__candidate_item_ids=_ids(51)),
        ]
        with pytest.raises(UniRankError) as error:
            await client.recommend_batch(batch)
        assert [f for f, _ in error.value.field_violations] == ["requests[1].options.candidate_item_ids"]
        # At the limits themselves, and with unicode that is not a control character, it answers.
        at_limits = _request(
            options__candidate_item_ids=_ids(50),
            context__history_item_ids=_ids(20),
            options__excluded_item_ids=_ids(30),
            options__max_results=100,
            context__search__query="s" * 500 + " 💥\u202eé\u0301\tx",
        )
        ranking = await client.recommend(at_limits)
        assert ranking.task_type == "search"


async def test_a_message_past_twice_the_limit_is_cut_off_by_grpc(limited_profile, artifact_dir: Path) -> None:  # type: ignore[no-untyped-def]
    async with (
        running_server(limited_profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address, timeout=10) as client,
    ):
        with pytest.raises(UniRankError) as error:
            await client.recommend(_request(context__device="x" * (130 * 1024)))
        assert error.value.code == "RESOURCE_EXHAUSTED"
        assert error.value.retry_after_s is None  # not an overload: retrying cannot help
        assert await client.health() == "SERVING"
