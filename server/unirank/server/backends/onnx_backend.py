"""ONNX Runtime scoring on CPU: no batching, lowest latency, never imports torch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from unirank.artifact import ModelInputs
from unirank.artifact.features import INPUT_NAMES, OUTPUT_NAME
from unirank.server.backends.base import BackendError

log = logging.getLogger(__name__)


class OnnxBackend:
    """Runs the artifact's ONNX graph in a thread pool (``InferenceSession.run`` releases the GIL)."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, model_path: Path, threads: int = 1, workers: int = 2) -> None:
        self._model_path = model_path
        self._threads = threads
        self._workers = workers
        self._session: ort.InferenceSession | None = None
        self._executor: ThreadPoolExecutor | None = None

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
        if sorted(names) != sorted(INPUT_NAMES):
            raise BackendError(f"{self._model_path}: graph inputs {names}, expected {list(INPUT_NAMES)}")
        return session

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="onnx")
        # Session creation holds the GIL for a while: do it off the loop, before serving.
        self._session = await loop.run_in_executor(self._executor, self._load)

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
        if self._executor is None:
            raise BackendError("backend not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.score_sync, inputs)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=False)
            self._executor = None
        self._session = None
