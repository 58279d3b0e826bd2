"""Random and adversarial requests through a real server: no crash, no INTERNAL/UNKNOWN, every
answer a valid ranking or a precise error, health still SERVING afterwards.

Four strategies: structured requests (valid and invalid values, huge lists, unicode edge cases),
batches of them, valid messages damaged on the wire (truncated, bytes flipped, invalid UTF-8,
unknown fields, wrong wire types, absurd lengths, deep nesting), and raw garbage bytes.
``UNIRANK_FUZZ_EXAMPLES`` sets the examples per strategy (``make stress`` runs 10,000 requests or
more); with ``UNIRANK_FUZZ_REPORT=PATH`` every outcome is tallied into that JSON file.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unirank.artifact import TASKS
from unirank.v1 import recommender_pb2 as pb
from unirank.v1 import recommender_pb2_grpc as pb_grpc

from ..conftest import running_server

EXAMPLES = int(os.environ.get("UNIRANK_FUZZ_EXAMPLES", "150"))
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class _ServerThread:
    """A real server on its own loop in a thread, so hypothesis can drive it synchronously."""

    def __init__(self, artifact: Path) -> None:
        self.address = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, args=(artifact,), daemon=True)

    def _run(self, artifact: Path) -> None:
        asyncio.run(self._main(artifact))

    async def _main(self, artifact: Path) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_server("cpu-realtime", artifact) as server:
            self.address = server.address
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> _ServerThread:
        self._thread.start()
        assert self._ready.wait(60), "server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def channel(artifact_dir: Path) -> Iterator[grpc.Channel]:
    with _ServerThread(artifact_dir) as server, grpc.insecure_channel(server.address) as ch:
        yield ch
        # Afterwards the server is still healthy.
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING


Tally = Counter[str]


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    """Outcomes by strategy: ``strategy|CODE`` and, for INVALID_ARGUMENT, ``strategy|field``."""
    counts: Tally = Counter()
    yield counts
    report = os.environ.get("UNIRANK_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(dict(sorted(counts.items())), indent=1))


def _record(counts: Tally, strategy: str, error: grpc.RpcError | None, response: object = None) -> None:
    counts[f"{strategy}|requests"] += 1
    if error is None:
        counts[f"{strategy}|OK"] += 1
        if isinstance(response, pb.RecommendBatchResponse):
            rankings: list[pb.RecommendResponse] = list(response.responses)
        else:
            rankings = [response] if isinstance(response, pb.RecommendResponse) else []
        counts[f"{strategy}|OK rankings"] += len(rankings)
        counts[f"{strategy}|OK rankings by fallback"] += sum(r.fallback for r in rankings)
        return
    counts[f"{strategy}|{error.code().name}"] += 1
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            for violation in bad_request.field_violations:
                assert violation.field and violation.description, violation
                field = re.sub(r"\[\d+\]", "[i]", violation.field)
                counts[f"{strategy}|field {field}: {_kind(violation.description)}"] += 1


def _kind(description: str) -> str:
    """The violation with its numbers blanked, so like violations tally together."""
    text = re.sub(r"\d+", "N", description)
    return text.split(":")[0][:70]


_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(["", " ", "\x00", "\u202e", "\ufeff", "a" * 200, "💥" * 50, "space", "1", "\n\t"]),
)
_ids = st.lists(_text, max_size=30)
# Well-formed values in the synthetic catalogue's id scheme; some known, some not (cold starts).
_item = st.from_regex(r"i0[0-9]{4}", fullmatch=True)
_user = st.from_regex(r"u0[0-9]{4}", fullmatch=True)
_category = st.sampled_from(["action", "adventure", "animation", "drama", "no-such-category"])
_words = st.sampled_from(["of", "code", "vault", "alibi", "space", "letters", "zzqx", "étoile", "東京", "💥"])
_query = st.lists(_words, min_size=1, max_size=6).map(" ".join)
_plain = st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9_.-]{1,32}", fullmatch=True))
# The default [server] limits are 1,000 history ids and 2,000 candidates.
_HISTORY_AT_LIMIT = [f"i{i:05d}" for i in range(1000)]
_HISTORY_PAST_LIMIT = [str(i) for i in range(2000)]
_CANDIDATES_AT_LIMIT = [f"i{i:05d}" for i in range(2000)]
_CANDIDATES_PAST_LIMIT = [str(i) for i in range(2001)]
_CANDIDATES_HUGE = [str(i) for i in range(20_000)]


@st.composite
def _requests(draw: st.DrawFn, huge: bool = True) -> pb.RecommendRequest:
    """Half well-formed (answered with a ranking unless a limit is crossed), half adversarial."""
    valid = draw(st.booleans())
    big = huge and draw(st.integers(0, 3)) == 0
    text, ids = (_plain, st.lists(_item, max_size=30)) if valid else (_text, _ids)
    if big:
        lists = (
            (_HISTORY_AT_LIMIT, _CANDIDATES_AT_LIMIT) if valid else (_HISTORY_PAST_LIMIT, _CANDIDATES_HUGE)
        )
        history, candidates = draw(st.sampled_from([lists, (lists[0], []), ([], _CANDIDATES_PAST_LIMIT)]))
    else:
        history, candidates = draw(ids), draw(ids)
    context = pb.RequestContext(
        request_id=draw(text),
        user_id=draw(_user if valid else _text),
        country=draw(st.sampled_from(["", "US", "FR", "JP"]) if valid else _text),
        language=draw(st.sampled_from(["", "en", "fr-CA"]) if valid else _text),
        device=draw(text),
        event_time_unix_ms=draw(st.integers(0, 2**62) if valid else st.integers(-(2**63), 2**63 - 1)),
        history_item_ids=history,
    )
    kind = draw(st.sampled_from([spec.context_field for spec in TASKS] + ([] if valid else ["none"])))
    if kind == "notification":
        context.notification.SetInParent()
    elif kind == "related_items":
        context.related_items.anchor_item_id = draw(_item if valid else _text)
    elif kind == "search":
        huge_query = st.just("x " * 5000) if huge else _text
        context.search.query = draw(_query if valid else st.one_of(_text, huge_query))
    elif kind == "category":
        context.category.category_id = draw(_category if valid else _text)
    elif kind == "new_releases":
        context.new_releases.SetInParent()
        context.new_releases.window_years = draw(
            st.integers(0, 10) if valid else st.integers(-(2**31), 2**31 - 1)
        )
    options = pb.RequestOptions(
        max_results=draw(st.integers(0, 100) if valid else st.integers(0, 2**32 - 1)),
        candidate_item_ids=candidates,
        excluded_item_ids=draw(ids),
        debug=draw(st.booleans()),
    )
    return pb.RecommendRequest(context=context, options=options)


def _assert_valid(response: pb.RecommendResponse, request: pb.RecommendRequest) -> None:
    assert response.task_type != pb.TASK_TYPE_UNSPECIFIED
    scores = [item.score for item in response.items]
    assert all(s == s for s in scores)  # no NaN
    assert len({item.item_id for item in response.items}) == len(response.items)
    assert not set(request.options.excluded_item_ids) & {item.item_id for item in response.items}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
    derandomize=True,
)
@given(request=_requests())
def test_random_requests_get_a_ranking_or_a_precise_error(
    channel: grpc.Channel, tally: Tally, request: pb.RecommendRequest
) -> None:
    stub = pb_grpc.RecommenderServiceStub(channel)
    try:
        response = stub.Recommend(request, timeout=10)
    except grpc.RpcError as error:
        _record(tally, "structured", error)
        assert error.code() in ALLOWED, (error.code(), error.details())
        assert error.details()
        return
    _record(tally, "structured", None, response)
    _assert_valid(response, request)


@settings(
    max_examples=max(1, EXAMPLES // 5),  # each example is up to 70 requests
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
    derandomize=True,
)
@given(requests=st.lists(_requests(huge=False), max_size=70))
def test_random_batches_get_rankings_or_a_precise_error(
    channel: grpc.Channel, tally: Tally, requests: list[pb.RecommendRequest]
) -> None:
    stub = pb_grpc.RecommenderServiceStub(channel)
    try:
        response = stub.RecommendBatch(pb.RecommendBatchRequest(requests=requests), timeout=10)
    except grpc.RpcError as error:
        _record(tally, "batch", error)
        assert error.code() in ALLOWED, (error.code(), error.details())
        assert error.details()
        return
    _record(tally, "batch", None, response)
    assert len(response.responses) == len(requests)
    for member, request in zip(response.responses, requests, strict=True):
        _assert_valid(member, request)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes = b"") -> bytes:
    return _varint(number << 3 | wire_type) + payload


_CONTEXT = pb.RecommendRequest.DESCRIPTOR.fields_by_name["context"].number
_USER_ID = pb.RequestContext.DESCRIPTOR.fields_by_name["user_id"].number


@st.composite
def _damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid request's bytes, damaged the way a broken or hostile client would."""
    raw = draw(_requests(huge=False)).SerializeToString()
    how = draw(
        st.sampled_from(
            [
                "truncated",
                "flipped",
                "invalid_utf8",
                "unknown_field",
                "wrong_wire_type",
                "huge_length",
                "deep_groups",
            ]
        )
    )
    if how == "truncated" and raw:
        return how, raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "flipped" and raw:
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return how, bytes(data)
    if how == "invalid_utf8":
        bad = draw(
            st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ok\xfe", b"\xf8\x88\x80\x80\x80"])
        )
        inner = _field(_USER_ID, 2, _varint(len(bad)) + bad)
        return how, raw + _field(_CONTEXT, 2, _varint(len(inner)) + inner)
    if how == "unknown_field":
        number = draw(st.integers(100, 2**29 - 1))
        payload = draw(st.binary(max_size=64))
        return how, raw + _field(number, 2, _varint(len(payload)) + payload)
    if how == "wrong_wire_type":
        return how, raw + _field(_CONTEXT, draw(st.sampled_from([0, 1, 5])), b"\x01" * 8)
    if how == "huge_length":
        return how, raw + _field(_CONTEXT, 2, _varint(draw(st.integers(2**20, 2**32))))
    depth = draw(st.integers(50, 2000))
    return "deep_groups", _field(999, 3) * depth + _field(999, 4) * depth


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(damaged=_damaged())
def test_damaged_messages_get_a_ranking_or_a_precise_error(
    channel: grpc.Channel, tally: Tally, damaged: tuple[str, bytes]
) -> None:
    how, payload = damaged
    call = channel.unary_unary(
        "/unirank.v1.RecommenderService/Recommend",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.RecommendResponse.FromString,
    )
    try:
        response = call(payload, timeout=10)
    except grpc.RpcError as error:
        _record(tally, f"damaged/{how}", error)
        assert error.code() in ALLOWED, (how, error.code(), error.details())
        assert error.details()
        return
    _record(tally, f"damaged/{how}", None, response)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(payload=st.binary(max_size=2048))
def test_raw_garbage_bytes_never_crash_or_answer_unknown(
    channel: grpc.Channel, tally: Tally, payload: bytes
) -> None:
    for method in ("Recommend", "RecommendBatch", "GetModelInfo"):
        call = channel.unary_unary(
            f"/unirank.v1.RecommenderService/{method}",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        try:
            call(payload, timeout=10)
        except grpc.RpcError as error:
            _record(tally, f"garbage/{method}", error)
            assert error.code() in ALLOWED, (method, error.code(), error.details())
            assert error.details()
        else:
            _record(tally, f"garbage/{method}", None)
