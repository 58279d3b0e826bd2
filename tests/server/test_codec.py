"""Request validation: the ASCII fast path agrees with the general check, the cache key is stable."""

from __future__ import annotations

import pytest

from unirank.artifact import Context, TaskType
from unirank.server.codec import _all_plain_ascii_ids, _id_problem
from unirank.server.domain import RankOptions, RankRequest
from unirank.server.pipeline import _cache_key


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
