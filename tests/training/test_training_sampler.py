"""The stratified-by-task batch sampler."""

from __future__ import annotations

import numpy as np
import pytest

from unirank.training.dataset import StratifiedTaskSampler

# Very unequal tasks: 1000 rows of task 1, 100 of task 2, 10 of task 3.
TASK = np.repeat(np.array([1, 2, 3]), [1000, 100, 10])


def _composition(batch: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(TASK[batch], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_every_batch_follows_the_ratios() -> None:
    sampler = StratifiedTaskSampler(TASK, batch_size=64, ratios={1: 1.0, 2: 1.0, 3: 2.0}, seed=0)
    assert sampler.quota == {1: 16, 2: 16, 3: 32}
    batches = list(sampler.epoch())
    assert len(batches) == sampler.steps_per_epoch == int(np.ceil(len(TASK) / 64))
    for batch in batches:
        assert _composition(batch) == {1: 16, 2: 16, 3: 32}


def test_quota_sums_to_the_batch_size() -> None:
    sampler = StratifiedTaskSampler(TASK, batch_size=10, ratios={1: 1.0, 2: 1.0, 3: 1.0}, seed=0)
    assert sum(sampler.quota.values()) == 10
    assert sorted(sampler.quota.values()) == [3, 3, 4]


def test_no_ratios_means_proportional_to_the_data() -> None:
    sampler = StratifiedTaskSampler(TASK, batch_size=111, ratios=None, seed=0)
    assert sampler.quota == {1: 100, 2: 10, 3: 1}


def test_small_task_is_cycled_without_repeats_within_a_pass() -> None:
    sampler = StratifiedTaskSampler(TASK, batch_size=64, ratios={1: 1.0, 2: 1.0, 3: 2.0}, seed=0)
    drawn = np.concatenate([batch[TASK[batch] == 2] for batch in sampler.epoch()])
    assert len(drawn) > 100
    first_pass = drawn[:100]
    assert sorted(first_pass.tolist()) == list(range(1000, 1100))  # each row once before any repeat


def test_zero_ratio_leaves_a_task_out() -> None:
    sampler = StratifiedTaskSampler(TASK, batch_size=32, ratios={1: 1.0, 2: 0.0, 3: 1.0}, seed=0)
    for batch in sampler.epoch():
        assert 2 not in _composition(batch)


def test_same_seed_same_batches() -> None:
    def draw(seed: int) -> list[np.ndarray]:
        return list(StratifiedTaskSampler(TASK, 64, {1: 1.0, 2: 1.0, 3: 1.0}, seed=seed).epoch())

    assert all(np.array_equal(a, b) for a, b in zip(draw(5), draw(5), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(draw(5), draw(6), strict=True))


def test_bad_ratios_are_rejected() -> None:
    with pytest.raises(ValueError, match="no rows"):
        StratifiedTaskSampler(TASK, 64, {1: 1.0, 4: 1.0})
    with pytest.raises(ValueError, match="positive ratio"):
        StratifiedTaskSampler(TASK, 64, {1: 0.0, 2: 0.0, 3: 0.0})


def test_batch_shares_follow_the_square_root_of_each_tasks_rows_by_default() -> None:
    from unirank.artifact import TASKS
    from unirank.training.config import TrainConfig
    from unirank.training.sampling import task_ratios

    tasks = np.repeat([1, 2, 5], [10_000, 2_500, 100])
    config = TrainConfig.tiny()
    assert config.task_ratios is None and config.task_sampling == "sqrt"
    assert task_ratios(config, tasks) == {1: 100.0, 2: 50.0, 5: 10.0}
    assert task_ratios(config.replace(task_sampling="equal"), tasks) == {1: 1.0, 2: 1.0, 5: 1.0}
    assert task_ratios(config.replace(task_sampling="proportional"), tasks) is None
    # Explicit ratios win, for the tasks that have rows.
    explicit = config.replace(task_ratios={"notification": 3.0, "search": 1.0})
    assert task_ratios(explicit, tasks) == {1: 3.0, 2: 0.0, 5: 0.0}
    # A single-task model samples its task only.
    only = config.only(TASKS[1].name)
    assert task_ratios(only, tasks) == {1: 0.0, 2: 1.0, 5: 0.0}
    with pytest.raises(ValueError, match="task_sampling"):
        config.replace(task_sampling="cube")
