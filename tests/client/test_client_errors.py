"""Non-OK statuses become UniRankError, with google.rpc details decoded when they can be."""

from __future__ import annotations

import pickle
import sys

import grpc
import pytest

from tests.client.client_echo_server import FAIL_INVALID, FAIL_UNAVAILABLE, RunningServer
from unirank.client import RecommenderClient, UniRankError
from unirank.client.errors import decode_status_details


def test_bad_request_details_become_field_violations(server: RunningServer) -> None:
    with RecommenderClient(server.target) as client, pytest.raises(UniRankError) as raised:
        client.search("", request_id=FAIL_INVALID)
    error = raised.value
    assert error.code == "INVALID_ARGUMENT"
    assert error.status_code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "the request is invalid"
    assert error.field_violations == [
        ("context.search.query", "must not be empty"),
        ("options.max_results", "must be <= 100"),
    ]
    assert error.reason == "INVALID_REQUEST"
    assert error.retry_after_s is None
    assert "context.search.query: must not be empty" in str(error)
    # The grpc error stays reachable for callers that want the raw call.
    assert isinstance(error.__cause__, grpc.RpcError)


def test_retry_info_becomes_retry_after(server: RunningServer) -> None:
    with RecommenderClient(server.target) as client, pytest.raises(UniRankError) as raised:
        client.notification("u1", request_id=FAIL_UNAVAILABLE)
    assert raised.value.code == "UNAVAILABLE"
    assert raised.value.message == "model not ready"
    assert raised.value.retry_after_s == pytest.approx(1.5)
    assert raised.value.field_violations == []
    assert "retry after 1.5 s" in str(raised.value)


def test_batch_errors_are_raised_too(server: RunningServer) -> None:
    from unirank.client import RecommendationRequest, Search

    with RecommenderClient(server.target) as client, pytest.raises(UniRankError) as raised:
        client.recommend_batch([RecommendationRequest(task=Search(query=""), request_id=FAIL_INVALID)])
    assert len(raised.value.field_violations) == 2


def test_without_googleapis_common_protos_the_code_and_message_still_arrive(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a client-only install without the extra: None in sys.modules makes the import
    # fail, and the attribute on the parent package must go too or ``from`` would find it.
    import google.rpc

    monkeypatch.setitem(sys.modules, "google.rpc.error_details_pb2", None)
    monkeypatch.delattr(google.rpc, "error_details_pb2", raising=False)
    with RecommenderClient(server.target) as client, pytest.raises(UniRankError) as raised:
        client.search("", request_id=FAIL_INVALID)
    assert (raised.value.code, raised.value.message) == ("INVALID_ARGUMENT", "the request is invalid")
    assert raised.value.field_violations == []


def test_undecodable_details_are_ignored() -> None:
    assert decode_status_details(b"\xff\xff not a status") == ([], None, "")


def test_unknown_code_name_has_no_status_code() -> None:
    error = UniRankError("FROM_THE_FUTURE", "x")
    assert error.status_code is None
    assert str(error) == "FROM_THE_FUTURE: x"


def test_errors_survive_pickling() -> None:
    error = UniRankError("UNAVAILABLE", "busy", field_violations=[("a", "b")], retry_after_s=2.0, reason="R")
    copy = pickle.loads(pickle.dumps(error))
    assert repr(copy) == repr(error)
    assert str(copy) == str(error)
