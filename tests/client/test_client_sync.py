"""The blocking client against a real grpc.aio server: encoding, decoding, deadlines, metadata."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import grpc
import pytest

from tests.client.client_echo_server import CACHED_PREFIX, MODEL_INFO, SLOW, RunningServer, echo_context
from unirank.client import (
    DEFAULT_TIMEOUT_S,
    ModelInfo,
    Notification,
    RankedItem,
    RecommendationRequest,
    RecommenderClient,
    Search,
    TaskInfo,
    UniRankError,
)
from unirank.client._common import CallSettings
from unirank.v1 import recommender_pb2 as pb


@pytest.fixture
def client(server: RunningServer) -> Iterator[RecommenderClient]:
    with RecommenderClient(server.target) as client:
        yield client


def sent(server: RunningServer) -> pb.RecommendRequest:
    request = server.last.request
    assert isinstance(request, pb.RecommendRequest)
    return request


def test_search_sends_the_search_oneof_and_every_option(
    server: RunningServer, client: RecommenderClient
) -> None:
    ranking = client.search(
        "space opera",
        user_id="u1",
        history_item_ids=["h1", "h2"],
        max_results=2,
        candidate_item_ids=["a", "b", "c", "d"],
        excluded_item_ids=["b"],
        debug=True,
        request_id="r-search",
        country="US",
        language="en",
        device="tv",
    )
    request = sent(server)
    assert request.context.WhichOneof("task") == "search"
    assert request.context.search.query == "space opera"
    assert request.options == pb.RequestOptions(
        max_results=2, candidate_item_ids=["a", "b", "c", "d"], excluded_item_ids=["b"], debug=True
    )
    # The echoed answer decodes into typed values.
    assert ranking.items == [
        RankedItem("a", 1.0, "Title of a", "space opera", "caller"),
        RankedItem("c", 0.5, "Title of c", "space opera", "caller"),
    ]
    assert ranking.task_type == "search"
    assert ranking.request_id == "r-search"
    assert (ranking.model_version, ranking.profile) == ("test-model-7", "test-profile")
    assert ranking.fallback_detail == "user=u1 country=US language=en device=tv history=h1,h2 event_time=0"
    assert (ranking.fallback, ranking.fallback_reason) == (False, "")
    assert ranking.timings == {"retrieve": 1.5, "score": 2.25}


def test_notification_sends_the_notification_oneof(server: RunningServer, client: RecommenderClient) -> None:
    ranking = client.notification("u2", history_item_ids=("h9",), candidate_item_ids=["x"])
    request = sent(server)
    assert request.context.WhichOneof("task") == "notification"
    assert request.context.user_id == "u2"
    assert list(request.context.history_item_ids) == ["h9"]
    assert ranking.task_type == "notification"
    assert ranking.item_ids == ["x"]
    # Without debug the server leaves sources and timings out.
    assert ranking.items[0].retrieval_source == ""
    assert ranking.timings == {}


def test_new_releases_sends_its_window(server: RunningServer, client: RecommenderClient) -> None:
    ranking = client.new_releases("u2", window_years=5, history_item_ids=["h1"], event_time_unix_ms=7)
    request = sent(server)
    assert request.context.WhichOneof("task") == "new_releases"
    assert request.context.new_releases.window_years == 5
    assert (request.context.user_id, list(request.context.history_item_ids)) == ("u2", ["h1"])
    assert request.context.event_time_unix_ms == 7
    assert ranking.task_type == "new_releases"
    client.new_releases("u2")
    assert sent(server).context.WhichOneof("task") == "new_releases"  # set even with the default window
    assert sent(server).context.new_releases.window_years == 0


def test_related_items_sends_the_anchor(server: RunningServer, client: RecommenderClient) -> None:
    ranking = client.related_items("i7", user_id="u3", candidate_item_ids=["a"])
    request = sent(server)
    assert request.context.WhichOneof("task") == "related_items"
    assert request.context.related_items.anchor_item_id == "i7"
    assert request.context.user_id == "u3"
    assert ranking.task_type == "related_items"
    assert ranking.items[0].category_id == "i7"


def test_category_without_user_is_a_cold_start(server: RunningServer, client: RecommenderClient) -> None:
    ranking = client.category("sci-fi", request_id=f"{CACHED_PREFIX}-1")
    request = sent(server)
    assert request.context.WhichOneof("task") == "category"
    assert request.context.category.category_id == "sci-fi"
    assert ranking.task_type == "category"
    assert (ranking.fallback, ranking.fallback_reason) == (True, "cold_start")
    assert ranking.served_from_cache is True
    assert ranking.items == []


def test_a_single_string_is_not_taken_as_a_list_of_ids(client: RecommenderClient) -> None:
    with pytest.raises(TypeError, match="candidate_item_ids"):
        client.search("q", candidate_item_ids="abc")


def test_recommend_accepts_protobuf_and_domain_requests(
    server: RunningServer, client: RecommenderClient
) -> None:
    message = pb.RecommendRequest(
        context=pb.RequestContext(user_id="u1", search=pb.SearchContext(query="q")),
        options=pb.RequestOptions(candidate_item_ids=["a"]),
    )
    assert client.recommend(message).item_ids == ["a"]
    assert sent(server) == message
    domain = RecommendationRequest(task=Search(query="q"), user_id="u1", candidate_item_ids=("a",))
    assert client.recommend(domain).item_ids == ["a"]
    assert sent(server) == message


def test_recommend_batch_keeps_request_order_across_tasks(
    server: RunningServer, client: RecommenderClient
) -> None:
    rankings = client.recommend_batch(
        [
            RecommendationRequest(task=Notification(), user_id="u1", request_id="first"),
            pb.RecommendRequest(
                context=pb.RequestContext(request_id="second", category=pb.CategoryContext(category_id="c"))
            ),
        ]
    )
    batch = server.last.request
    assert isinstance(batch, pb.RecommendBatchRequest)
    assert [r.context.WhichOneof("task") for r in batch.requests] == ["notification", "category"]
    assert [(r.request_id, r.task_type) for r in rankings] == [
        ("first", "notification"),
        ("second", "category"),
    ]


def test_model_info_decodes(client: RecommenderClient) -> None:
    info = client.model_info()
    assert info == ModelInfo(
        model_version="test-model-7",
        schema_version="1",
        profile="test-profile",
        backend="onnx",
        device="cpu",
        tasks=[TaskInfo("search", True, {"ndcg@10": 0.5}), TaskInfo("category", False, {})],
        created_unix_ms=MODEL_INFO.created_unix_ms,
        catalog_size=1234,
    )


def test_health_reports_the_serving_status(client: RecommenderClient) -> None:
    assert client.health() == "SERVING"
    assert client.health("unirank.v1.RecommenderService") == "NOT_SERVING"
    with pytest.raises(UniRankError) as raised:
        client.health("no.such.Service")
    assert raised.value.code == "NOT_FOUND"


def assert_deadline_near(remaining: float | None, expected_s: float) -> None:
    # gRPC rounds the timeout header up a little, and the call took a moment to arrive.
    assert remaining is not None, "the call carried no deadline"
    assert expected_s - 0.75 < remaining < expected_s + 0.25


def test_default_deadline_is_applied(server: RunningServer, client: RecommenderClient) -> None:
    client.notification("u1")
    assert_deadline_near(server.last.time_remaining, DEFAULT_TIMEOUT_S)


def test_per_call_timeout_overrides_the_default(server: RunningServer, client: RecommenderClient) -> None:
    client.notification("u1", timeout=30.0)
    assert_deadline_near(server.last.time_remaining, 30.0)


def test_client_timeout_sets_the_default(server: RunningServer) -> None:
    with RecommenderClient(server.target, timeout=9.0) as client:
        client.model_info()
    assert_deadline_near(server.last.time_remaining, 9.0)


def test_no_default_deadline_when_disabled(server: RunningServer) -> None:
    with RecommenderClient(server.target, timeout=None) as client:
        client.model_info()
    assert server.last.time_remaining is None or server.last.time_remaining > 3600


def test_deadline_exceeded_raises_unirank_error(server: RunningServer) -> None:
    with RecommenderClient(server.target, timeout=0.2) as client, pytest.raises(UniRankError) as raised:
        client.notification("u1", request_id=SLOW)
    assert raised.value.code == "DEADLINE_EXCEEDED"
    assert raised.value.status_code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_unreachable_server_raises_unavailable() -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    with RecommenderClient("127.0.0.1:1", timeout=5.0) as client, pytest.raises(UniRankError) as raised:
        client.model_info()
    assert raised.value.code == "UNAVAILABLE"


def test_bearer_token_and_metadata_reach_the_server(server: RunningServer) -> None:
    with RecommenderClient(server.target, bearer_token="s3cret", metadata=[("X-Tenant", "acme")]) as client:
        client.model_info()
    assert server.last.metadata["authorization"] == "Bearer s3cret"
    assert server.last.metadata["x-tenant"] == "acme"


def test_trace_context_is_propagated_when_opentelemetry_is_present(server: RunningServer) -> None:
    trace_sdk = pytest.importorskip("opentelemetry.sdk.trace")
    tracer = trace_sdk.TracerProvider().get_tracer("unirank-client-test")
    with RecommenderClient(server.target) as client, tracer.start_as_current_span("caller") as span:
        client.notification("u1")
    trace_id = format(span.get_span_context().trace_id, "032x")
    traceparent = server.last.metadata.get("traceparent", "")
    assert traceparent.split("-")[1] == trace_id


def test_no_trace_context_without_opentelemetry(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes ``import opentelemetry`` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert CallSettings.create(timeout=1.0, bearer_token=None, metadata=()).inject_trace_context is None
    with RecommenderClient(server.target) as client:
        client.notification("u1")
    assert "traceparent" not in server.last.metadata


def test_invalid_construction_arguments_fail_early() -> None:
    with pytest.raises(ValueError, match="timeout"):
        RecommenderClient("localhost:1", timeout=0)


def test_context_fields_reach_the_server_verbatim(server: RunningServer, client: RecommenderClient) -> None:
    client.search("q", user_id="u5", country="DE", language="de", device="web", event_time_unix_ms=42)
    assert (
        echo_context(sent(server).context)
        == "user=u5 country=DE language=de device=web history= event_time=42"
    )
