"""Head calibration: a task head's weight on popularity and co-engagement is raised only where
validation says so, and the model stays one graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unirank.artifact import TASKS
from unirank.training.calibration import _BiasSteps, calibrate_heads, calibrated_features
from unirank.training.config import TrainConfig
from unirank.training.evaluate import ModelScorer, chunk_inputs, sample_rows, validation_ndcg
from unirank.training.pipeline import PreparedData, prepare_data
from unirank.training.scoring import Batch
from unirank.training.sources import load_logs
from unirank.training.train import build_model

NAMES = {int(spec.task_type): spec.name for spec in TASKS if spec.name in ("notification", "new_releases")}


@pytest.fixture(scope="module")
def data() -> PreparedData:
    return prepare_data(load_logs("synthetic", size="tiny", seed=0), 20, 8)


def _rows(data: PreparedData) -> dict[int, np.ndarray]:
    return {t: sample_rows(data.dataset.rows("validation", t), 60, t) for t in NAMES}


def test_calibration_only_keeps_steps_that_raise_validation(data: PreparedData) -> None:
    torch.manual_seed(0)
    model = build_model(data.catalog, TrainConfig.tiny(), data.co_engagement).eval()
    rows = _rows(data)
    before = validation_ndcg(model, data.dataset, rows, data.catalog)
    biases = [head.cross.bias.detach().clone() for head in model.heads]
    added = calibrate_heads(model, data.dataset, rows, data.catalog, NAMES)
    after = validation_ndcg(model, data.dataset, rows, data.catalog)
    assert set(added) == set(NAMES.values())
    assert any(added.values())  # an untrained head gains from the plain signals
    calibrated = {index for _, index, _ in calibrated_features(model)}
    # popularity, co-engagement with history and anchor, popularity now, the MF score
    assert len(calibrated) == 5
    for task, name in NAMES.items():
        assert after[task] >= before[task]
        change = model.heads[task - 1].cross.bias.detach() - biases[task - 1]
        assert set(torch.nonzero(change).flatten().tolist()) <= calibrated
        assert (after[task] > before[task]) == bool(added[name])


def test_a_model_without_task_heads_is_left_alone(data: PreparedData) -> None:
    model = build_model(data.catalog, TrainConfig.tiny(use_task_type=False), data.co_engagement).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert calibrate_heads(model, data.dataset, _rows(data), data.catalog, NAMES) == {}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_step_scored_from_cached_columns_equals_rescoring_the_raised_head(data: PreparedData) -> None:
    # Calibration scores each step as the current scores plus step x the feature's column (the
    # score is linear in the head's cross bias) instead of a pass of the model per step.
    torch.manual_seed(0)
    model = build_model(data.catalog, TrainConfig.tiny(), data.co_engagement).eval()
    task = next(iter(NAMES))
    rows = _rows(data)[task]
    batch = Batch(chunk_inputs(data.dataset, rows), data.dataset, rows)
    head = model.heads[task - 1]
    steps = _BiasSteps(model, head)
    steps(batch)
    for _, index, _ in calibrated_features(model):
        steps.step = (index, 0.7)
        cached = steps(batch)
        with torch.no_grad():
            head.cross.bias[index] += 0.7
            rescored = ModelScorer(model)(batch)
            head.cross.bias[index] -= 0.7
        assert np.abs(cached - rescored).max() < 1e-4
        if index == 2:  # popularity: the step moves the scores of played items
            assert np.abs(cached - steps.base[(int(rows[0]), len(rows))]).max() > 1e-2
    steps.keep(2, 0.5)  # kept for good: the head and the cached scores move together
    with torch.no_grad():
        assert np.abs(steps(batch) - ModelScorer(model)(batch)).max() < 1e-4


def test_validation_with_a_time_cache_scores_as_without_and_fills_it(data: PreparedData) -> None:
    torch.manual_seed(0)
    model = build_model(data.catalog, TrainConfig.tiny(), data.co_engagement).eval()
    rows = _rows(data)
    cache: dict[bytes, torch.Tensor | None] = {}
    plain = validation_ndcg(model, data.dataset, rows, data.catalog)
    assert validation_ndcg(model, data.dataset, rows, data.catalog, cache) == plain
    assert len(cache) == len(rows)  # one batch of rows per task
    assert validation_ndcg(model, data.dataset, rows, data.catalog, cache) == plain  # read from it
