"""The ONNX Runtime backend: dedicated scoring threads, or inline on the loop (``inference_workers = 0``)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from unirank.artifact import load_artifact
from unirank.client import AsyncRecommenderClient
from unirank.server.backends.base import BackendError
from unirank.server.backends.onnx_backend import OnnxBackend, ScoringThreads

from ..conftest import profile_with, running_server


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


async def test_inline_and_threaded_scoring_rank_the_same(artifact_dir: Path) -> None:
    artifact = load_artifact(artifact_dir)
    anchors = [artifact.catalog.items.key(i) for i in range(1, 6)]
    rankings: dict[int, list[list[tuple[str, float]]]] = {}
    for workers in (0, 2):
        profile = profile_with(
            model={"inference_workers": workers}, server={"max_queued_rpcs": 64, "max_queue_wait_ms": 0}
        )
        async with running_server(profile, artifact_dir) as server:
            assert isinstance(server.pipeline.runtime.backend, OnnxBackend)
            async with AsyncRecommenderClient(server.address) as client:
                answers = await asyncio.gather(*(client.related_items(anchor) for anchor in anchors))
        assert all(a.items and not a.fallback for a in answers)
        rankings[workers] = [[(i.item_id, round(i.score, 5)) for i in a.items] for a in answers]
    assert rankings[0] == rankings[2]
