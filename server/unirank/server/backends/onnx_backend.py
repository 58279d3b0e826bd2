"""ONNX Runtime scoring on CPU, inline, on scoring threads or dynamically batched; never imports torch."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from unirank.artifact import ModelInputs
from unirank.artifact.features import INPUT_NAMES, OUTPUT_NAME, input_names
from unirank.server.backends.base import BackendError, check_scores
from unirank.server.backends.stacking import concat_model_inputs, split_scores
from unirank.server.batching import BatcherStats, BatchObserver, DynamicBatcher, MemberFailed
from unirank.server.config import BatchingConfig

log = logging.getLogger(__name__)


def _settle(future: asyncio.Future[np.ndarray], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (deadline, cancellation) while the model ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ScoringThreads:
    """Model calls off the event loop on dedicated threads fed by one queue.

    Leaner than ``run_in_executor``: no ``concurrent.futures`` future to chain to an asyncio one,
    just a queue put, the call, and one ``call_soon_threadsafe`` that settles the caller's future.
    """

    def __init__(self, workers: int, call: Callable[[ModelInputs], np.ndarray], name: str) -> None:
        self._call = call
        self._queue: queue.SimpleQueue[tuple[asyncio.Future[np.ndarray], ModelInputs] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: ModelInputs) -> asyncio.Future[np.ndarray]:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put((future, inputs))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, inputs = item
            if future.done():
                continue
            try:
                result, error = self._call(inputs), None
            except BaseException as exc:  # handed to the caller, whatever it is
                result, error = None, exc
            future.get_loop().call_soon_threadsafe(_settle, future, result, error)

    def close(self) -> None:
        """Finish what is queued, then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


class OnnxBackend:
    """Runs the artifact's ONNX graph on dedicated scoring threads (``InferenceSession.run``
    releases the GIL), or inline on the event loop with ``workers = 0`` (or, given ``alone``,
    whenever it says the call is the only one open in the server).

    With ``batching``, requests waiting for the model are scored together: one call per batch,
    on the scoring threads (or inline). Under concurrent load that amortises what a call costs
    besides its rows (graph dispatch, caches gone cold since the last call, the thread hand-off).
    A batch the model refuses is scored again request by request, so a bad request fails alone
    instead of failing its batch mates.
    """

    name = "onnxruntime"
    device = "cpu"

    def __init__(
        self,
        model_path: Path,
        threads: int = 1,
        workers: int = 2,
        batching: BatchingConfig | None = None,
        *,
        batch_observer: BatchObserver | None = None,
        alone: Callable[[], bool] | None = None,
    ) -> None:
        self._model_path = model_path
        self._alone = alone
        self._threads = threads
        self._workers = workers
        self._session: ort.InferenceSession | None = None
        self._scoring: ScoringThreads | None = None
        self._batcher: DynamicBatcher[ModelInputs, np.ndarray] | None = DynamicBatcher.configured(
            self._score_batch, batching, observer=batch_observer
        )
        self._direct_calls = 0
        self.inline_calls = 0
        """Model calls run on the event loop (all of them with no scoring threads)."""

    @property
    def inline(self) -> bool:
        return self._workers == 0 and self._batcher is None

    def _load(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        # One intra-op thread per call: under concurrent load more threads steal the cores gRPC needs.
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(self._model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a truncated or foreign graph whose checksum still matched its manifest
            raise BackendError(f"{self._model_path}: not a loadable ONNX graph: {exc}") from exc
        names = [i.name for i in session.get_inputs()]
        if sorted(names) not in (sorted(INPUT_NAMES), sorted(input_names(True))):
            raise BackendError(
                f"{self._model_path}: graph inputs {names}, expected {list(INPUT_NAMES)} "
                f"(or {list(input_names(True))} with time features)"
            )
        return session

    async def start(self) -> None:
        # Session creation holds the GIL for a while: do it off the loop, before serving.
        self._session = await asyncio.to_thread(self._load)
        if self._workers > 0:
            self._scoring = ScoringThreads(self._workers, self.score_sync, "onnx")

    def score_sync(self, inputs: ModelInputs) -> np.ndarray:
        if self._session is None:
            raise BackendError("backend not started")
        try:
            (scores,) = self._session.run([OUTPUT_NAME], inputs.as_dict())
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime failed: {exc}") from exc
        return np.asarray(scores, dtype=np.float32)

    async def score(
        self, inputs: ModelInputs, deadline: float | None = None, *, tag: Hashable = None
    ) -> np.ndarray:
        if self._session is None:
            raise BackendError("backend not started")
        if self._batcher is not None:
            return check_scores(await self._batcher.submit(inputs, deadline, request_id=tag), inputs)
        self._direct_calls += 1
        return check_scores(await self._call(inputs), inputs)

    async def _score_batch(self, requests: list[ModelInputs]) -> list[np.ndarray | MemberFailed]:
        """One model call for a formed batch: stacked, scored (on a scoring thread), split again."""
        if len(requests) == 1:
            return [await self._call(requests[0])]
        try:
            return list(split_scores(await self._call(concat_model_inputs(requests)), requests))
        except BackendError:
            pass
        # The stacked call failed: score each request alone so only the bad ones fail.
        results: list[np.ndarray | MemberFailed] = []
        for inputs in requests:
            try:
                results.append(await self._call(inputs))
            except BackendError as exc:
                results.append(MemberFailed(exc))
        return results

    async def _call(self, inputs: ModelInputs) -> np.ndarray:
        """One model call: inline (the loop waits for it) or on a scoring thread; inline too when
        ``alone()`` says no other call is open, as nothing could use the loop meanwhile."""
        if self._scoring is None or (self._alone is not None and self._alone()):
            self.inline_calls += 1
            return self.score_sync(inputs)
        return await self._scoring.submit(inputs)

    def batch_stats(self) -> BatcherStats:
        """Batches executed and their mean size (unbatched: every call is a batch of one)."""
        if self._batcher is not None:
            return self._batcher.stats()
        return BatcherStats(self._direct_calls, self._direct_calls, 0, 0, 0)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close(drain=True)
        scoring, self._scoring = self._scoring, None
        if scoring is not None:
            await asyncio.to_thread(scoring.close)
        self._session = None
