"""The ONNX Runtime backend: scoring threads, inline on the loop (``inference_workers = 0``), batched."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from unirank.artifact import Context, TaskType, load_artifact
from unirank.client import AsyncRecommenderClient
from unirank.server.backends.base import BackendError
from unirank.server.backends.onnx_backend import OnnxBackend, ScoringThreads

from ..conftest import profile_with, running_server

RECOMMEND = "/unirank.v1.RecommenderService/Recommend"


async def _never() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()
    yield b""  # pragma: no cover - never reached


class _Recorder:
    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.release = threading.Event()

    def __call__(self, inputs: object) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        value = getattr(inputs, "value", 0)
        if value == "boom":
            raise BackendError("model failed")
        if value == "block":
            self.release.wait(10)
        return np.asarray([value], dtype=np.float32)


class _Box:
    def __init__(self, value: object) -> None:
        self.value = value


async def test_scoring_threads_answer_each_caller_and_hand_errors_back() -> None:
    recorder = _Recorder()
    threads = ScoringThreads(2, recorder, "test-scoring")  # type: ignore[arg-type]
    try:
        results = await asyncio.gather(*(threads.submit(_Box(i)) for i in range(20)))  # type: ignore[arg-type]
        assert [float(r[0]) for r in results] == [float(i) for i in range(20)]
        assert recorder.threads <= {"test-scoring-0", "test-scoring-1"}
        with pytest.raises(BackendError, match="model failed"):
            await threads.submit(_Box("boom"))  # type: ignore[arg-type]
    finally:
        recorder.release.set()
        threads.close()


async def test_a_caller_that_gave_up_does_not_break_the_thread() -> None:
    recorder = _Recorder()
    threads = ScoringThreads(1, recorder, "test-scoring")  # type: ignore[arg-type]
    try:
        blocked = threads.submit(_Box("block"))  # type: ignore[arg-type]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await blocked
        recorder.release.set()
        # The same thread goes on serving the next caller once the abandoned call returns.
        assert float((await threads.submit(_Box(7)))[0]) == 7.0  # type: ignore[arg-type]
    finally:
        recorder.release.set()
        threads.close()


REQUEST_TIME_MS = 1_767_225_600_000  # 2026-01-01: every server scores at the same time


async def test_inline_and_threaded_scoring_rank_the_same(artifact_dir: Path) -> None:
    artifact = load_artifact(artifact_dir)
    anchors = [artifact.catalog.items.key(i) for i in range(1, 6)]
    rankings: dict[tuple[int, bool], list[list[tuple[str, float]]]] = {}
    for workers, batched in ((0, False), (2, False), (1, True), (0, True)):
        profile = profile_with(
            model={"inference_workers": workers, "batching": {"enabled": batched, "max_queue_delay_ms": 50}},
            server={"max_queued_rpcs": 64, "max_queue_wait_ms": 0},
        )
        async with running_server(profile, artifact_dir) as server:
            backend = server.pipeline.runtime.backend
            assert isinstance(backend, OnnxBackend) and backend.inline == (workers == 0 and not batched)
            async with AsyncRecommenderClient(server.address) as client:
                # One request time for all: time features (recent popularity, age) move with it.
                answers = await asyncio.gather(
                    *(client.related_items(anchor, event_time_unix_ms=REQUEST_TIME_MS) for anchor in anchors)
                )
            stats = backend.batch_stats()
        assert all(a.items and not a.fallback for a in answers)
        assert stats.requests >= len(anchors) and (stats.batches < stats.requests) == batched
        rankings[(workers, batched)] = [[(i.item_id, round(i.score, 5)) for i in a.items] for a in answers]
    assert len({str(r) for r in rankings.values()}) == 1, "batched, threaded and inline scores differ"


async def test_a_request_the_model_refuses_fails_alone_in_its_batch(artifact_dir: Path) -> None:
    from unirank.server.config import BatchingConfig

    artifact = load_artifact(artifact_dir)
    config = BatchingConfig(enabled=True, max_batch_size=8, max_queue_delay_ms=50.0)
    backend = OnnxBackend(artifact.onnx_path, workers=1, batching=config)
    await backend.start()
    try:
        encoder = artifact.encoder()
        good = [
            encoder.batch([encoder.encode(Context(TaskType.RELATED_ITEMS, anchor_item_id=key))], ids)
            for key, ids in (("x", np.array([[1, 2, 3]])), ("y", np.array([[4, 5]])))
        ]
        bad = encoder.batch([encoder.encode(Context(TaskType.NOTIFICATION))], np.array([[1, 10**9]]))
        results = await asyncio.gather(
            *(backend.score(inputs) for inputs in (good[0], bad, good[1])), return_exceptions=True
        )
        assert isinstance(results[1], BackendError)
        for inputs, scores in zip(good, (results[0], results[2]), strict=True):
            assert isinstance(scores, np.ndarray) and scores.shape == inputs.candidates.shape
            np.testing.assert_allclose(scores, backend.score_sync(inputs), rtol=1e-5)
        assert backend.batch_stats().batches == 1  # one batch, answered member by member
    finally:
        await backend.close()


async def test_a_call_alone_in_the_server_is_scored_on_the_loop_others_on_the_thread(
    artifact_dir: Path,
) -> None:
    """cpu-realtime scores on one thread with batching; a call that is the only one open in the
    server runs the model on the event loop instead (no hand-off to the thread and back). With a
    second call open (here one that has not sent its message yet) calls go to the thread, and
    ``inline_when_alone = false`` sends every call there."""
    artifact = load_artifact(artifact_dir)
    anchors = [artifact.catalog.items.key(i) for i in range(1, 6)]
    queued = {"max_queued_rpcs": 64, "max_queue_wait_ms": 0}
    async with (
        running_server(profile_with(server=queued), artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        backend = server.pipeline.runtime.backend
        assert isinstance(backend, OnnxBackend) and not backend.inline
        before = backend.inline_calls
        for anchor in anchors:  # one at a time: each is alone
            answer = await client.related_items(anchor, event_time_unix_ms=REQUEST_TIME_MS)
            assert answer.items and not answer.fallback
        assert backend.inline_calls - before == len(anchors)
        assert server.calls.count == 0  # every call counted out again

        async with grpc.aio.insecure_channel(server.address) as channel:
            stalled = channel.stream_unary(RECOMMEND)(_never(), timeout=30)
            while server.calls.count < 1:  # the call is open, its message never comes
                await asyncio.sleep(0.01)
            before, requests = backend.inline_calls, backend.batch_stats().requests
            for anchor in anchors:
                answer = await client.related_items(anchor, event_time_unix_ms=REQUEST_TIME_MS)
                assert answer.items and not answer.fallback
            assert backend.inline_calls == before  # not alone: on the scoring thread
            assert backend.batch_stats().requests - requests == len(anchors)
            stalled.cancel()
        while server.calls.count:
            await asyncio.sleep(0.01)

    off = profile_with(server=queued, model={"inline_when_alone": False})
    async with running_server(off, artifact_dir) as server, AsyncRecommenderClient(server.address) as client:
        backend = server.pipeline.runtime.backend
        assert isinstance(backend, OnnxBackend)
        await client.related_items(anchors[0], event_time_unix_ms=REQUEST_TIME_MS)
        assert backend.inline_calls == 0  # warm-up, drift reference and the call: all on the thread
