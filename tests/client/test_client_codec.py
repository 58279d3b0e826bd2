"""The codec converts domain values <-> unirank.v1 protobuf both ways without losing anything."""

from __future__ import annotations

import pytest

from unirank.client import codec
from unirank.client.domain import (
    Category,
    GateDecision,
    GateVerdict,
    ModelInfo,
    NewReleases,
    Notification,
    RankedItem,
    Ranking,
    RecommendationRequest,
    RelatedItems,
    Search,
    Task,
    TaskInfo,
)
from unirank.v1 import recommender_pb2 as pb

TASKS: list[tuple[Task, str]] = [
    (Notification(), "notification"),
    (RelatedItems(anchor_item_id="i9"), "related_items"),
    (Search(query="space opera"), "search"),
    (Category(category_id="sci-fi"), "category"),
    (NewReleases(window_years=2), "new_releases"),
]


def full_request(task: Task) -> RecommendationRequest:
    return RecommendationRequest(
        task=task,
        user_id="u1",
        history_item_ids=("h1", "h2"),
        request_id="r1",
        country="US",
        language="en",
        device="tv",
        event_time_unix_ms=1_700_000_000_123,
        max_results=7,
        candidate_item_ids=("c1", "c2"),
        excluded_item_ids=("x1",),
        debug=True,
    )


@pytest.mark.parametrize(("task", "oneof"), TASKS)
def test_request_round_trip_sets_the_oneof(task: Task, oneof: str) -> None:
    request = full_request(task)
    message = codec.encode_request(request)
    assert message.context.WhichOneof("task") == oneof
    assert message.context.user_id == "u1"
    assert list(message.context.history_item_ids) == ["h1", "h2"]
    assert message.context.event_time_unix_ms == 1_700_000_000_123
    assert message.options == pb.RequestOptions(
        max_results=7, candidate_item_ids=["c1", "c2"], excluded_item_ids=["x1"], debug=True
    )
    assert codec.decode_request(message) == request
    # ... and protobuf -> domain -> protobuf is the identity too, byte for byte.
    reparsed = pb.RecommendRequest.FromString(message.SerializeToString())
    assert (
        codec.encode_request(codec.decode_request(reparsed)).SerializeToString()
        == message.SerializeToString()
    )


@pytest.mark.parametrize(
    "task",
    [
        RelatedItems(anchor_item_id=""),
        Search(query=""),
        Category(category_id=""),
        NewReleases(window_years=0),
    ],
)
def test_empty_task_field_still_names_the_task(task: Task) -> None:
    # The server must still see which use-case was asked for (and answer INVALID_ARGUMENT
    # naming the empty field), not a request without a task.
    message = pb.RecommendRequest.FromString(
        codec.encode_request(RecommendationRequest(task=task)).SerializeToString()
    )
    assert message.context.WhichOneof("task") is not None
    assert codec.decode_request(message).task == task


def test_request_without_task_does_not_decode() -> None:
    with pytest.raises(ValueError, match="no task"):
        codec.decode_request(pb.RecommendRequest())


def test_negative_max_results_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="max_results"):
        codec.encode_request(RecommendationRequest(task=Notification(), max_results=-1))


def make_ranking() -> Ranking:
    return Ranking(
        items=[
            RankedItem("i1", 0.75, "One", "c1", "lexical"),
            RankedItem("i2", 0.5, "Two", "c2", "popular"),
            RankedItem("i3", 0.25),
        ],
        request_id="r1",
        task_type="related_items",
        model_version="v3",
        profile="cpu-realtime",
        served_from_cache=True,
        fallback=True,
        fallback_reason="cold_start",
        fallback_detail="unknown user u9",
        timings={"retrieve": 1.5, "score": 0.25},
    )


def test_ranking_round_trip() -> None:
    ranking = make_ranking()
    message = codec.encode_ranking(ranking)
    assert message.task_type == pb.TASK_TYPE_RELATED_ITEMS
    assert message.fallback_reason == pb.FALLBACK_REASON_COLD_START
    assert [item.retrieval_source for item in message.items] == [
        pb.RETRIEVAL_SOURCE_LEXICAL,
        pb.RETRIEVAL_SOURCE_POPULAR,
        pb.RETRIEVAL_SOURCE_UNSPECIFIED,
    ]
    assert [(t.stage, t.duration_ms) for t in message.timings] == [("retrieve", 1.5), ("score", 0.25)]
    assert codec.decode_ranking(pb.RecommendResponse.FromString(message.SerializeToString())) == ranking
    assert ranking.item_ids == ["i1", "i2", "i3"]


def test_unspecified_enums_decode_to_empty_names() -> None:
    ranking = codec.decode_ranking(pb.RecommendResponse(items=[pb.RankedItem(item_id="i1", score=1.0)]))
    assert (ranking.task_type, ranking.fallback_reason, ranking.items[0].retrieval_source) == ("", "", "")


def test_enum_values_unknown_to_these_stubs_survive_a_round_trip() -> None:
    # A newer server may send an enum value this client was not generated with.
    message = pb.RecommendResponse(
        task_type=42,  # type: ignore[arg-type]
        items=[pb.RankedItem(item_id="i1", retrieval_source=99)],  # type: ignore[arg-type]
    )
    ranking = codec.decode_ranking(message)
    assert (ranking.task_type, ranking.items[0].retrieval_source) == ("42", "99")
    assert codec.encode_ranking(ranking) == message


def test_unknown_short_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'search'"):
        codec.task_type_value("serch")


def test_repeated_stage_timings_add_up() -> None:
    message = pb.RecommendResponse(
        timings=[
            pb.StageTiming(stage="score", duration_ms=1.0),
            pb.StageTiming(stage="score", duration_ms=2.5),
        ]
    )
    assert codec.decode_ranking(message).timings == {"score": 3.5}


def test_model_info_round_trip() -> None:
    info = ModelInfo(
        model_version="v3",
        schema_version="1",
        profile="gpu-batch",
        backend="torch",
        device="cuda",
        tasks=[
            TaskInfo("notification", True, {"ndcg@10": 0.5, "recall@50": 0.75}),
            TaskInfo("search", False, {}),
        ],
        created_unix_ms=1_700_000_000_000,
        catalog_size=5000,
    )
    message = codec.encode_model_info(info)
    assert [task.task_type for task in message.tasks] == [pb.TASK_TYPE_NOTIFICATION, pb.TASK_TYPE_SEARCH]
    assert codec.decode_model_info(pb.GetModelInfoResponse.FromString(message.SerializeToString())) == info


def test_the_gate_decision_round_trips_with_its_missing_values() -> None:
    gate = GateDecision(
        "v4",
        "v3",
        False,
        1_700_000_000_000,
        [
            GateVerdict("search", "ndcg@10", 0.5, 0.4, -0.2, 583, False, "drops 20.0%", "validation_log"),
            GateVerdict(
                "category", "ndcg@10", None, 0.3, None, 120, True, "no serving value to compare with"
            ),
            GateVerdict("notification", "ndcg@10", 0.3, None, None, 0, False, "no offline ndcg@10"),
        ],
    )
    info = ModelInfo(model_version="v3", last_gate=gate)
    message = pb.GetModelInfoResponse.FromString(codec.encode_model_info(info).SerializeToString())
    assert message.last_gate.tasks[1].HasField("candidate_value")
    assert not message.last_gate.tasks[1].HasField("serving_value")
    assert codec.decode_model_info(message) == info
    assert codec.decode_model_info(pb.GetModelInfoResponse(model_version="v3")).last_gate is None
