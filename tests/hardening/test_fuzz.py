"""Random and adversarial requests through a real server: no crash, no INTERNAL/UNKNOWN, every
answer a valid ranking or a precise error, health still SERVING afterwards.

``UNIRANK_FUZZ_EXAMPLES`` sets the number of requests per strategy (``make stress`` runs 10,000).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(["", " ", "\x00", "\u202e", "\ufeff", "a" * 200, "💥" * 50, "space", "1", "\n\t"]),
)
_ids = st.lists(_text, max_size=30)


@st.composite
def _requests(draw: st.DrawFn) -> pb.RecommendRequest:
    context = pb.RequestContext(
        request_id=draw(_text),
        user_id=draw(_text),
        country=draw(_text),
        language=draw(_text),
        device=draw(_text),
        event_time_unix_ms=draw(st.integers(-(2**63), 2**63 - 1)),
        history_item_ids=draw(st.one_of(_ids, st.just([str(i) for i in range(2000)]))),
    )
    kind = draw(st.sampled_from(["notification", "related_items", "search", "category", "none"]))
    if kind == "notification":
        context.notification.SetInParent()
    elif kind == "related_items":
        context.related_items.anchor_item_id = draw(_text)
    elif kind == "search":
        context.search.query = draw(st.one_of(_text, st.just("x " * 5000)))
    elif kind == "category":
        context.category.category_id = draw(_text)
    options = pb.RequestOptions(
        max_results=draw(st.integers(0, 2**32 - 1)),
        candidate_item_ids=draw(st.one_of(_ids, st.just([str(i) for i in range(20_000)]))),
        excluded_item_ids=draw(_ids),
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
    channel: grpc.Channel, request: pb.RecommendRequest
) -> None:
    stub = pb_grpc.RecommenderServiceStub(channel)
    try:
        response = stub.Recommend(request, timeout=10)
    except grpc.RpcError as error:
        assert error.code() in ALLOWED, (error.code(), error.details())
        assert error.details()
        return
    _assert_valid(response, request)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(payload=st.binary(max_size=2048))
def test_raw_garbage_bytes_never_crash_or_answer_unknown(channel: grpc.Channel, payload: bytes) -> None:
    for method in ("Recommend", "RecommendBatch", "GetModelInfo"):
        call = channel.unary_unary(
            f"/unirank.v1.RecommenderService/{method}",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        try:
            call(payload, timeout=10)
        except grpc.RpcError as error:
            assert error.code() in ALLOWED, (method, error.code(), error.details())
            assert error.details()
