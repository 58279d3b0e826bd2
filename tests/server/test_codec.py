"""Request validation: the ASCII fast path agrees with the general check, the cache key is stable."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from unirank.artifact import Context, TaskType
from unirank.server.codec import _all_plain_ascii_ids, _id_problem, request_from_pb
from unirank.server.domain import RankOptions, RankRequest
from unirank.server.errors import InvalidArgument
from unirank.server.request_context import cache_key as _cache_key
from unirank.v1 import recommender_pb2 as pb


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("i00042", True),
        ("tt0111161", True),
        ("a-b_c.d:e/f", True),
        ("has space", False),
        ("tab\there", False),
        ("nul\x00", False),
        ("del\x7f", False),
        ("x" * 129, False),
        ("café", True),
        ("zero\u200bwidth", False),
        ("nbsp\u00a0", False),
    ],
)
def test_id_check(value: str, ok: bool) -> None:
    assert (_id_problem(value) is None) is ok
    assert _all_plain_ascii_ids([value, "i1"]) is (ok and value.isascii())


def test_whole_list_fast_path_refuses_empty_entries_and_lists() -> None:
    assert not _all_plain_ascii_ids([])
    assert not _all_plain_ascii_ids(["i1", ""])
    assert _all_plain_ascii_ids(["i1", "i2"])


def _request(**context: object) -> RankRequest:
    return RankRequest(
        context=Context(task=TaskType.SEARCH, **context), options=RankOptions(), request_id="r1"
    )  # type: ignore[arg-type]


def test_cache_key_ignores_request_id_and_query_spacing_but_not_content() -> None:
    a = _request(query="Space  Opera")
    b = RankRequest(context=a.context, options=a.options, request_id="other")
    assert _cache_key(a) == _cache_key(b) == _cache_key(_request(query="space opera"))
    assert _cache_key(a) != _cache_key(_request(query="space"))
    assert _cache_key(_request(history_item_ids=("a", "b"))) != _cache_key(_request(history_item_ids=("ab",)))
    assert len(_cache_key(a)) == 16  # type: ignore[arg-type]


def test_new_releases_context_decodes_with_its_window() -> None:
    message = pb.RecommendRequest(
        context=pb.RequestContext(
            user_id="u1", event_time_unix_ms=5, new_releases=pb.NewReleasesContext(window_years=2)
        )
    )
    request = request_from_pb(message)
    assert request.task is TaskType.NEW_RELEASES
    assert (request.window_years, request.event_time_unix_ms, request.context.user_id) == (2, 5, "u1")
    message.context.new_releases.window_years = 0  # the default window
    assert request_from_pb(message).window_years == 0


@pytest.mark.parametrize(
    ("context", "field"),
    [
        ({"new_releases": {"window_years": -1}, "user_id": "u1"}, "context.new_releases.window_years"),
        ({"new_releases": {"window_years": 201}, "user_id": "u1"}, "context.new_releases.window_years"),
        ({"new_releases": {}}, "context.user_id"),  # nobody to rank for
    ],
)
def test_new_releases_requests_are_validated(context: dict[str, object], field: str) -> None:
    message = json_format.ParseDict({"context": context}, pb.RecommendRequest())
    with pytest.raises(InvalidArgument) as caught:
        request_from_pb(message)
    assert [v.field for v in caught.value.violations] == [field]


def test_sources_are_indexed_by_value() -> None:
    from unirank.server.domain import SOURCES, Source

    assert [s.value for s in SOURCES] == list(range(len(Source)))
