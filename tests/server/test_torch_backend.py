"""The torch backend: checkpoint loading, parity with the model, batching, CPU fallback, safety."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from unirank.artifact.features import INPUT_NAMES, ModelInputs
from unirank.model.net import ModelConfig, UniRankModel, model_checkpoint
from unirank.server.backends.base import BackendError, DeadlineDropped
from unirank.server.backends.stacking import concat_model_inputs, split_scores
from unirank.server.backends.torch_backend import TorchBackend
from unirank.server.config import BatchingConfig

N_ITEMS, N_USERS, N_TOKENS, N_CATEGORIES, N_TASKS = 40, 12, 25, 6, 4
GUARD_S = 30.0  # hang guard only, never a latency assertion


def make_model(seed: int = 0) -> UniRankModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    title_tokens = rng.integers(0, N_TOKENS, (N_ITEMS, 4))
    item_categories = rng.integers(0, N_CATEGORIES, (N_ITEMS, 2))
    title_tokens[0] = 0
    item_categories[0] = 0
    config = ModelConfig(
        n_items=N_ITEMS, n_users=N_USERS, n_tokens=N_TOKENS, n_categories=N_CATEGORIES, dim=8, hidden=16
    )
    model = UniRankModel(config, title_tokens, item_categories, rng.integers(0, 100, N_ITEMS))
    return model.eval()


def make_inputs(
    rng: np.random.Generator, rows: int, n_candidates: int, history: int, query: int
) -> ModelInputs:
    candidates = rng.integers(1, N_ITEMS, (rows, n_candidates))
    candidates[:, -1] = 0  # a padded slot inside the request itself
    return ModelInputs(
        task=rng.integers(1, N_TASKS + 1, rows),
        user=rng.integers(0, N_USERS, rows),
        history=rng.integers(0, N_ITEMS, (rows, history)),
        query_tokens=rng.integers(0, N_TOKENS, (rows, query)),
        anchor_item=rng.integers(0, N_ITEMS, rows),
        category=rng.integers(0, N_CATEGORIES, rows),
        candidates=candidates,
    )


def direct_forward(model: UniRankModel, inputs: ModelInputs) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.as_tensor(getattr(inputs, name)) for name in INPUT_NAMES)).numpy()


@pytest.fixture
def model() -> UniRankModel:
    return make_model()


@pytest.fixture
def checkpoint_path(tmp_path: Path, model: UniRankModel) -> Path:
    path = tmp_path / "model.pt"
    torch.save(model_checkpoint(model), path)
    return path


@pytest.fixture
async def unbatched(checkpoint_path: Path) -> AsyncIterator[TorchBackend]:
    backend = TorchBackend(checkpoint_path, warmup_requests=2)
    await backend.start()
    yield backend
    await backend.close()


def batched_backend(path: Path, max_batch_size: int = 6, **kwargs: Any) -> TorchBackend:
    config = BatchingConfig(
        enabled=True, max_batch_size=max_batch_size, max_queue_delay_ms=20.0, max_queue_size=64
    )
    return TorchBackend(path, batching=config, warmup_requests=2, **kwargs)


async def test_scores_match_the_models_forward(unbatched: TorchBackend, model: UniRankModel) -> None:
    inputs = make_inputs(np.random.default_rng(1), rows=4, n_candidates=9, history=5, query=3)
    scores = await unbatched.score(inputs)
    assert scores.dtype == np.float32
    assert scores.shape == (4, 9)
    np.testing.assert_allclose(scores, direct_forward(model, inputs), rtol=1e-5, atol=1e-5)
    assert unbatched.name == "torch" and unbatched.device == "cpu"
    assert unbatched.batch_stats().batches == 1


async def test_batched_equals_unbatched_for_mixed_tasks_and_widths(
    unbatched: TorchBackend, checkpoint_path: Path, model: UniRankModel
) -> None:
    rng = np.random.default_rng(2)
    shapes = [(1, 3, 2, 1), (2, 7, 4, 3), (1, 5, 1, 2), (1, 11, 6, 1), (2, 2, 3, 4), (1, 6, 2, 2)]
    requests = [make_inputs(rng, *shape) for shape in shapes]
    # Every task in play, so the batch really mixes heads.
    assert set(np.concatenate([r.task for r in requests]).tolist()) == {1, 2, 3, 4}
    backend = batched_backend(checkpoint_path, max_batch_size=len(requests))
    await backend.start()
    try:
        batched = await asyncio.wait_for(asyncio.gather(*(backend.score(r) for r in requests)), GUARD_S)
        stats = backend.batch_stats()
    finally:
        await backend.close()
    # All six were queued before the worker ran, so they executed as one padded batch.
    assert (stats.batches, stats.mean_batch_size) == (1, 6.0)
    for request, scores in zip(requests, batched, strict=True):
        alone = await unbatched.score(request)
        assert scores.shape == request.candidates.shape and scores.dtype == np.float32
        np.testing.assert_allclose(scores, alone, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scores, direct_forward(model, request), rtol=1e-5, atol=1e-5)


def test_concat_pads_with_zero_and_split_restores_each_request() -> None:
    rng = np.random.default_rng(3)
    a = make_inputs(rng, rows=1, n_candidates=2, history=3, query=1)
    b = make_inputs(rng, rows=2, n_candidates=4, history=1, query=2)
    merged = concat_model_inputs([a, b])
    assert merged.candidates.shape == (3, 4) and merged.history.shape == (3, 3)
    assert merged.query_tokens.shape == (3, 2)
    assert (merged.candidates[0, 2:] == 0).all() and (merged.history[1:, 1:] == 0).all()
    assert merged.task.tolist() == a.task.tolist() + b.task.tolist()
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    parts = split_scores(scores, [a, b])
    assert [p.tolist() for p in parts] == [[[0, 1]], [[4, 5, 6, 7], [8, 9, 10, 11]]]


def test_concat_pads_the_time_features_beside_their_candidates() -> None:
    rng = np.random.default_rng(4)
    a = make_inputs(rng, rows=1, n_candidates=2, history=3, query=1)
    b = make_inputs(rng, rows=2, n_candidates=4, history=1, query=2)
    a.candidate_time = rng.random((1, 2, 3)).astype(np.float32)
    b.candidate_time = rng.random((2, 4, 3)).astype(np.float32)
    merged = concat_model_inputs([a, b])
    assert merged.candidate_time is not None and merged.candidate_time.shape == (3, 4, 3)
    np.testing.assert_array_equal(merged.candidate_time[0, :2], a.candidate_time[0])
    assert (merged.candidate_time[0, 2:] == 0).all()
    np.testing.assert_array_equal(merged.candidate_time[1:], b.candidate_time)
    b.candidate_time = None
    with pytest.raises(BackendError, match="time features"):
        concat_model_inputs([a, b])


async def test_cuda_request_falls_back_to_cpu_with_a_warning(
    checkpoint_path: Path,
    model: UniRankModel,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Forced off so the test means the same on a GPU machine.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="unirank.server.backends.torch_backend"):
        backend = TorchBackend(checkpoint_path, device="cuda", warmup_requests=1)
    assert backend.device == "cpu"
    assert any("CUDA is not available" in record.getMessage() for record in caplog.records)
    await backend.start()
    try:
        inputs = make_inputs(np.random.default_rng(4), rows=2, n_candidates=5, history=2, query=2)
        np.testing.assert_allclose(await backend.score(inputs), direct_forward(model, inputs), atol=1e-5)
    finally:
        await backend.close()


def test_unknown_device_is_rejected(checkpoint_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported device"):
        TorchBackend(checkpoint_path, device="tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_cuda_scores_match_cpu(checkpoint_path: Path, model: UniRankModel) -> None:
    backend = batched_backend(checkpoint_path, device="cuda")
    await backend.start()
    try:
        assert backend.device == "cuda"
        inputs = make_inputs(np.random.default_rng(5), rows=3, n_candidates=8, history=4, query=2)
        np.testing.assert_allclose(await backend.score(inputs), direct_forward(model, inputs), atol=1e-4)
    finally:
        await backend.close()


_unpickled: list[str] = []


def _record_unpickle(tag: str) -> str:
    _unpickled.append(tag)
    return tag


class Payload:
    """Anything whose unpickling runs code; a weights-only load must refuse it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record_unpickle, ("payload ran",))


async def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path, model: UniRankModel) -> None:
    path = tmp_path / "tampered.pt"
    # Otherwise a valid checkpoint: only weights_only stands between it and running the payload.
    torch.save({**model_checkpoint(model), "extra": Payload()}, path)
    _unpickled.clear()
    backend = TorchBackend(path, warmup_requests=0)
    with pytest.raises(BackendError, match="cannot load torch checkpoint"):
        await backend.start()
    assert _unpickled == []
    assert not backend.ready
    await backend.close()


async def test_missing_checkpoint_is_a_backend_error(tmp_path: Path) -> None:
    backend = TorchBackend(tmp_path / "absent.pt", warmup_requests=0)
    with pytest.raises(BackendError, match=r"absent\.pt"):
        await backend.start()
    await backend.close()


async def test_invalid_request_fails_alone_not_its_batch_mates(
    checkpoint_path: Path, model: UniRankModel
) -> None:
    rng = np.random.default_rng(6)
    good = make_inputs(rng, rows=1, n_candidates=4, history=2, query=2)
    bad = make_inputs(rng, rows=1, n_candidates=4, history=2, query=2)
    bad.candidates[0, 0] = N_ITEMS  # outside the item vocabulary
    backend = batched_backend(checkpoint_path, max_batch_size=2)
    await backend.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(backend.score(good), backend.score(bad), return_exceptions=True), GUARD_S
        )
    finally:
        await backend.close()
    assert isinstance(results[1], BackendError) and "candidates" in str(results[1])
    assert isinstance(results[0], np.ndarray)
    np.testing.assert_allclose(results[0], direct_forward(model, good), atol=1e-5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("anchor_item", np.array([1, 2])),  # wrong row count
        ("history", np.array([1, 2])),  # wrong rank
        ("category", np.array([-1])),  # negative id
        ("user", np.array([0.5])),  # not integers
    ],
)
async def test_malformed_inputs_raise_backend_error(
    unbatched: TorchBackend, field: str, value: np.ndarray
) -> None:
    inputs = make_inputs(np.random.default_rng(7), rows=1, n_candidates=3, history=2, query=2)
    setattr(inputs, field, value)
    with pytest.raises(BackendError, match=field):
        await unbatched.score(inputs)


@pytest.mark.parametrize("batching", [False, True])
async def test_model_failure_is_raised_as_backend_error(
    checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch, batching: bool
) -> None:
    backend = (
        batched_backend(checkpoint_path) if batching else TorchBackend(checkpoint_path, warmup_requests=0)
    )
    await backend.start()

    def broken(*args: Any) -> Any:
        raise RuntimeError("CUDA out of memory (simulated)")

    assert backend._model is not None
    monkeypatch.setattr(backend._model, "forward", broken)
    inputs = make_inputs(np.random.default_rng(8), rows=1, n_candidates=3, history=2, query=2)
    try:
        with pytest.raises(BackendError, match="out of memory"):
            await asyncio.wait_for(backend.score(inputs), GUARD_S)
    finally:
        await backend.close()


@pytest.mark.parametrize("batching", [False, True])
async def test_expired_deadline_is_dropped(checkpoint_path: Path, batching: bool) -> None:
    backend = (
        batched_backend(checkpoint_path) if batching else TorchBackend(checkpoint_path, warmup_requests=0)
    )
    await backend.start()
    inputs = make_inputs(np.random.default_rng(9), rows=1, n_candidates=3, history=2, query=2)
    try:
        with pytest.raises(DeadlineDropped):
            await backend.score(inputs, deadline=asyncio.get_running_loop().time() - 1.0)
        assert backend.batch_stats().batches == 0
    finally:
        await backend.close()


async def test_inference_runs_off_the_event_loop(
    unbatched: TorchBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []
    assert unbatched._model is not None
    original = unbatched._model.forward

    def spy(*args: Any) -> Any:
        threads.append(threading.get_ident())
        assert torch.is_inference_mode_enabled()
        return original(*args)

    monkeypatch.setattr(unbatched._model, "forward", spy)
    await unbatched.score(make_inputs(np.random.default_rng(10), rows=1, n_candidates=3, history=2, query=2))
    assert threads and loop_thread not in threads


async def test_close_rejects_new_work_and_is_idempotent(checkpoint_path: Path) -> None:
    backend = batched_backend(checkpoint_path)
    await backend.start()
    assert backend.ready
    await backend.close()
    await backend.close()
    assert not backend.ready
    with pytest.raises(BackendError, match="closed"):
        await backend.score(
            make_inputs(np.random.default_rng(11), rows=1, n_candidates=3, history=2, query=2)
        )


async def test_score_before_start_is_a_backend_error(checkpoint_path: Path) -> None:
    backend = TorchBackend(checkpoint_path)
    with pytest.raises(BackendError, match="not started"):
        await backend.score(
            make_inputs(np.random.default_rng(12), rows=1, n_candidates=3, history=2, query=2)
        )
    await backend.close()


async def test_threads_are_applied_on_the_inference_thread(
    checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenMP's thread count belongs to the calling thread, so it must be set where forward runs.
    backend = TorchBackend(checkpoint_path, threads=1, warmup_requests=0)
    await backend.start()
    seen: list[int] = []
    assert backend._model is not None
    original = backend._model.forward

    def spy(*args: Any) -> Any:
        seen.append(torch.get_num_threads())
        return original(*args)

    monkeypatch.setattr(backend._model, "forward", spy)
    try:
        await backend.score(
            make_inputs(np.random.default_rng(13), rows=1, n_candidates=3, history=2, query=2)
        )
    finally:
        await backend.close()
    assert seen == [1]


def test_the_time_input_is_checked_against_the_model() -> None:
    from unirank.artifact.features import TIME_INPUT
    from unirank.server.backends.torch_backend import _id_limits, check_model_inputs

    rng = np.random.default_rng(5)
    inputs = make_inputs(rng, rows=2, n_candidates=3, history=2, query=1)
    with_time = _id_limits(
        ModelConfig(
            n_items=N_ITEMS, n_users=N_USERS, n_tokens=N_TOKENS, n_categories=N_CATEGORIES, time_features=True
        )
    )
    without = _id_limits(
        ModelConfig(n_items=N_ITEMS, n_users=N_USERS, n_tokens=N_TOKENS, n_categories=N_CATEGORIES)
    )
    check_model_inputs(inputs, without)
    with pytest.raises(BackendError, match=f"{TIME_INPUT}.*missing"):
        check_model_inputs(inputs, with_time)
    inputs.candidate_time = np.zeros((2, 2, 3), dtype=np.float32)
    with pytest.raises(BackendError, match="shape"):
        check_model_inputs(inputs, with_time)
    inputs.candidate_time = np.zeros((2, 3, 3), dtype=np.float32)
    check_model_inputs(inputs, with_time)
    with pytest.raises(BackendError, match="without time features"):
        check_model_inputs(inputs, without)
