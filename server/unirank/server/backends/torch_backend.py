"""The torch scoring backend: the checkpoint on CPU or CUDA, one inference thread, optional batching."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unirank.artifact.activity import N_TIME_FEATURES
from unirank.artifact.features import INPUT_NAMES, TIME_INPUT, ModelInputs, input_names
from unirank.model.net import build_model_from_checkpoint
from unirank.model.serving import ServingModel, serving_model
from unirank.server.backends.base import BackendError, DeadlineDropped, check_scores
from unirank.server.backends.stacking import ROW_INPUTS, concat_model_inputs, split_scores
from unirank.server.batching import BatcherStats, BatchObserver, DynamicBatcher
from unirank.server.config import BatchingConfig

logger = logging.getLogger(__name__)


def resolve_device(requested: str) -> str:
    """The device torch will really use: ``cuda[:i]`` falls back to ``cpu`` (with a warning) without a GPU."""
    if requested == "cpu":
        return "cpu"
    if requested.split(":", 1)[0] != "cuda":
        raise ValueError(f"unsupported device {requested!r}; expected 'cpu', 'cuda' or 'cuda:<index>'")
    if not torch.cuda.is_available():
        logger.warning(
            "device %r requested but CUDA is not available; the torch backend runs on cpu", requested
        )
        return "cpu"
    index = torch.device(requested).index
    if index is not None and index >= torch.cuda.device_count():
        raise ValueError(f"device {requested!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return requested


def _id_limits(config: Any) -> dict[str, int]:
    """Exclusive upper bound of every input's ids under ``config`` (a ModelConfig)."""
    return {
        "task": config.n_tasks + 1,
        "user": config.n_users,
        "history": config.n_items,
        "query_tokens": config.n_tokens,
        "anchor_item": config.n_items,
        "category": config.n_categories,
        "candidates": config.n_items,
        TIME_INPUT: int(bool(getattr(config, "time_features", False))),  # 1: the model takes it
    }


def check_model_inputs(inputs: ModelInputs, limits: dict[str, int]) -> None:
    """Raise :class:`BackendError` unless ``inputs`` match the input contract and the vocabularies.

    Checked before batching because a bad request inside a batch would fail every batch mate.
    """
    rows = len(inputs)
    for name in INPUT_NAMES:
        array = getattr(inputs, name)
        if not isinstance(array, np.ndarray):
            raise BackendError(f"input {name!r} is {type(array).__name__}, not a numpy array")
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
            raise BackendError(f"input {name!r} has dtype {array.dtype}, expected int64")
        want_ndim = 1 if name in ROW_INPUTS else 2
        if array.ndim != want_ndim or array.shape[0] != rows:
            expected = f"[{rows}]" if want_ndim == 1 else f"[{rows}, width]"
            raise BackendError(f"input {name!r} has shape {list(array.shape)}, expected {expected}")
        if array.size and (int(array.min()) < 0 or int(array.max()) >= limits[name]):
            raise BackendError(
                f"input {name!r} holds ids outside [0, {limits[name]}): min {array.min()}, max {array.max()}"
            )
    _check_time_input(inputs, bool(limits.get(TIME_INPUT)))


def _check_time_input(inputs: ModelInputs, wanted: bool) -> None:
    """``candidate_time``: a float [B, N, 3] beside the candidates, exactly when the model takes it."""
    times = inputs.candidate_time
    if times is None:
        if wanted:
            raise BackendError(f"input {TIME_INPUT!r} is missing: the model has time features")
        return
    if not wanted:
        raise BackendError(f"input {TIME_INPUT!r} given to a model without time features")
    if not isinstance(times, np.ndarray) or not np.issubdtype(times.dtype, np.floating):
        raise BackendError(f"input {TIME_INPUT!r} must be a float array")
    if times.shape != (*inputs.candidates.shape, N_TIME_FEATURES):
        raise BackendError(
            f"input {TIME_INPUT!r} has shape {list(times.shape)}, expected "
            f"{[*inputs.candidates.shape, N_TIME_FEATURES]}"
        )


class TorchBackend:
    """Scores with the torch checkpoint in a dedicated single-thread executor, optionally batched.

    The checkpoint is the training model; it is scored in its serving form (the same scores from
    precomputed item tables, as the exported ONNX graph), built once at load.

    Torch owns one thread (and, on CUDA, one stream): every load, warm-up and forward pass runs
    on that thread, so the event loop never blocks and model calls never interleave.
    """

    name = "torch"
    inline = False

    def __init__(
        self,
        model_path: Path,
        device: str = "cpu",
        threads: int = 1,
        batching: BatchingConfig | None = None,
        warmup_requests: int = 8,
        *,
        batch_observer: BatchObserver | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if warmup_requests < 0:
            raise ValueError(f"warmup_requests must be >= 0, got {warmup_requests}")
        self.model_path = Path(model_path)
        self.requested_device = device
        self.device = resolve_device(device)
        self.threads = threads
        self.batching = batching
        self.warmup_requests = warmup_requests
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unirank-torch")
        self._model: ServingModel | None = None
        self._limits: dict[str, int] = {}
        self._closed = False
        self._batcher: DynamicBatcher[ModelInputs, np.ndarray] | None = DynamicBatcher.configured(
            self._score_batch, batching, executor=self._executor, observer=batch_observer
        )
        # Unbatched calls: counted here so benchmarks read one stats shape either way.
        self._direct_calls = 0
        self._direct_failed = 0
        self._direct_dropped = 0

    @property
    def ready(self) -> bool:
        return self._model is not None and not self._closed

    async def start(self) -> None:
        if self._closed:
            raise BackendError("torch backend is closed")
        if self._model is not None:
            return
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._executor, self._load)
        if self.warmup_requests:
            await loop.run_in_executor(self._executor, self._warm_up, model)
        self._limits = _id_limits(model.config)
        self._model = model
        logger.info(
            "torch backend ready: %s on %s, %d thread(s), batching %s",
            self.model_path,
            self.device,
            self.threads,
            "on" if self._batcher is not None else "off",
        )

    async def score(
        self, inputs: ModelInputs, deadline: float | None = None, *, tag: Hashable = None
    ) -> np.ndarray:
        if self._closed:
            raise BackendError("torch backend is closed")
        if self._model is None:
            raise BackendError("torch backend is not started")
        check_model_inputs(inputs, self._limits)
        rows, width = inputs.candidates.shape
        if rows == 0 or width == 0:
            return np.zeros((rows, width), dtype=np.float32)
        if self._batcher is not None:
            return check_scores(await self._batcher.submit(inputs, deadline, request_id=tag), inputs)
        return check_scores(await self._score_direct(inputs, deadline), inputs)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._batcher is not None:
            await self._batcher.close(drain=True)
        # Waits for in-flight direct calls on a helper thread, never on the loop.
        await asyncio.to_thread(self._executor.shutdown, True)
        self._model = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def batch_stats(self) -> BatcherStats:
        """Batches executed and mean batch size (unbatched: every call is a batch of one)."""
        if self._batcher is not None:
            return self._batcher.stats()
        return BatcherStats(
            batches=self._direct_calls,
            requests=self._direct_calls,
            failed_batches=self._direct_failed,
            deadline_dropped=self._direct_dropped,
            cancelled=0,
        )

    # -- executor-thread work ----------------------------------------------------------------

    def _load(self) -> ServingModel:
        # Set here, not in __init__: OpenMP keeps the thread count per calling thread.
        torch.set_num_threads(self.threads)
        try:
            # map_location is cpu whatever the device: building the model reads buffers via .numpy().
            # weights_only refuses pickled code, so a tampered artifact cannot run on load.
            checkpoint = torch.load(self.model_path, map_location="cpu", weights_only=True)
            if not isinstance(checkpoint, dict):
                raise TypeError(f"checkpoint is a {type(checkpoint).__name__}, not a dict")
            model = serving_model(build_model_from_checkpoint(checkpoint))
        except Exception as exc:
            raise BackendError(f"cannot load torch checkpoint {self.model_path}: {exc}") from exc
        return model.to(self.device).eval()

    def _warm_up(self, model: ServingModel) -> None:
        """First calls allocate and pick kernels; pay that before health says SERVING."""
        config = model.config
        rng = np.random.default_rng(0)
        max_rows = self._batcher.max_batch_size if self._batcher is not None else 1
        for i in range(self.warmup_requests):
            rows = max_rows if i % 2 else 1
            width = (8, 32, 128)[i % 3]
            inputs = ModelInputs(
                task=rng.integers(1, config.n_tasks + 1, rows),
                user=rng.integers(0, config.n_users, rows),
                history=rng.integers(0, config.n_items, (rows, 20)),
                query_tokens=rng.integers(0, config.n_tokens, (rows, 8)),
                anchor_item=rng.integers(0, config.n_items, rows),
                category=rng.integers(0, config.n_categories, rows),
                candidates=rng.integers(0, config.n_items, (rows, width)),
                candidate_time=(
                    rng.random((rows, width, N_TIME_FEATURES)).astype(np.float32)
                    if config.time_features
                    else None
                ),
            )
            try:
                self._forward(model, inputs)
            except Exception as exc:
                raise BackendError(
                    f"torch warm-up failed on {self.device}: {type(exc).__name__}: {exc}"
                ) from exc

    def _forward(self, model: ServingModel, inputs: ModelInputs) -> np.ndarray:
        tensors = []
        for name in input_names(model.config.time_features):
            dtype = np.float32 if name == TIME_INPUT else np.int64
            array = np.ascontiguousarray(getattr(inputs, name), dtype=dtype)
            if not array.flags.writeable:
                array = array.copy()  # torch.from_numpy warns on read-only memory
            tensors.append(torch.from_numpy(array).to(self.device))
        with torch.inference_mode():
            scores = model(*tensors)
            return scores.to(device="cpu", dtype=torch.float32).numpy()

    def _run_model(self, inputs: ModelInputs) -> np.ndarray:
        model = self._model
        if model is None:
            raise BackendError("torch backend is closed")
        try:
            return self._forward(model, inputs)
        except Exception as exc:
            raise BackendError(f"torch scoring failed: {type(exc).__name__}: {exc}") from exc

    def _score_batch(self, requests: list[ModelInputs]) -> list[np.ndarray]:
        if len(requests) == 1:
            return [self._run_model(requests[0])]
        return split_scores(self._run_model(concat_model_inputs(requests)), requests)

    async def _score_direct(self, inputs: ModelInputs, deadline: float | None) -> np.ndarray:
        loop = asyncio.get_running_loop()

        def run() -> np.ndarray:
            # loop.time() is the monotonic clock, so reading it from the worker thread is safe.
            if deadline is not None and loop.time() >= deadline:
                self._direct_dropped += 1
                raise DeadlineDropped("deadline passed before the torch call started")
            self._direct_calls += 1
            try:
                return self._run_model(inputs)
            except BackendError:
                self._direct_failed += 1
                raise

        return await loop.run_in_executor(self._executor, run)
