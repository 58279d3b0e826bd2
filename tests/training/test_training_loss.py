"""The multi-task loss: sum_t w_t * L_t, and each head learns only from its own task's rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unirank.artifact import TASKS, TaskType, task_by_name
from unirank.model.net import ModelConfig, UniRankModel
from unirank.training.config import TrainConfig
from unirank.training.loss import multitask_loss, task_weight_vector
from unirank.training.sampling import NegativeSampler

N_ITEMS = 30


def _model(seed: int = 0) -> UniRankModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ModelConfig(
        n_items=N_ITEMS, n_users=10, n_tokens=20, n_categories=5, dim=8, hidden=16, dropout=0.0
    )
    return UniRankModel(
        config,
        title_tokens=rng.integers(0, 20, size=(N_ITEMS, 4)),
        item_categories=rng.integers(0, 5, size=(N_ITEMS, 2)),
        item_popularity=rng.random(N_ITEMS),
    )


def _batch(task: list[int], seed: int = 0, candidates: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = len(task)
    return {
        "task": torch.tensor(task),
        "user": torch.randint(1, 10, (b,), generator=g),
        "history": torch.randint(0, N_ITEMS, (b, 5), generator=g),
        "query_tokens": torch.randint(0, 20, (b, 3), generator=g),
        "anchor_item": torch.randint(1, N_ITEMS, (b,), generator=g),
        "category": torch.randint(1, 5, (b,), generator=g),
        "candidates": torch.randint(1, N_ITEMS, (b, candidates), generator=g),
    }


def _head_grad_norms(model: UniRankModel) -> list[float]:
    return [
        sum(float(p.grad.abs().sum()) if p.grad is not None else 0.0 for p in head.parameters())
        for head in model.heads
    ]


def test_a_search_only_batch_trains_only_the_search_head() -> None:
    model = _model()
    scores = model(**_batch([int(TaskType.SEARCH)] * 8))
    loss, _, _ = multitask_loss(scores, torch.full((8,), int(TaskType.SEARCH)), torch.ones(len(TASKS) + 1))
    loss.backward()
    grads = _head_grad_norms(model)
    search = task_by_name("search").head_index
    assert grads[search] > 0
    assert all(g == 0.0 for i, g in enumerate(grads) if i != search), grads


def test_a_mixed_batch_trains_every_head_present() -> None:
    model = _model()
    task = [int(TaskType.NOTIFICATION), int(TaskType.CATEGORY)] * 4
    scores = model(**_batch(task))
    loss, _, _ = multitask_loss(scores, torch.tensor(task), torch.ones(len(TASKS) + 1))
    loss.backward()
    grads = _head_grad_norms(model)
    assert grads[task_by_name("notification").head_index] > 0
    assert grads[task_by_name("category").head_index] > 0
    assert grads[task_by_name("search").head_index] == 0.0
    assert grads[task_by_name("related_items").head_index] == 0.0


def test_a_zero_weight_task_gives_its_head_no_gradient() -> None:
    model = _model()
    task = [int(TaskType.SEARCH), int(TaskType.RELATED_ITEMS)] * 4
    weights = task_weight_vector(TrainConfig(task_weights={"search": 0.0}))
    scores = model(**_batch(task))
    loss, _, _ = multitask_loss(scores, torch.tensor(task), weights)
    loss.backward()
    grads = _head_grad_norms(model)
    assert grads[task_by_name("search").head_index] == 0.0
    assert grads[task_by_name("related_items").head_index] > 0


def test_loss_is_the_weighted_sum_of_per_task_means() -> None:
    torch.manual_seed(0)
    task = torch.tensor([1, 1, 1, 2, 3, 3])
    scores = torch.randn(6, 5)
    weights = torch.tensor([0.0, 2.0, 0.5, 1.5, 7.0])  # task 4 has no rows: its weight must not matter
    loss, per_task, counts = multitask_loss(scores, task, weights)
    ce = F.cross_entropy(scores, torch.zeros(6, dtype=torch.long), reduction="none")
    expected = 2.0 * ce[:3].mean() + 0.5 * ce[3] + 1.5 * ce[4:].mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(per_task[1:4], torch.stack([ce[:3].mean(), ce[3], ce[4:].mean()]))
    assert counts.tolist() == [0, 3, 1, 2, 0]


def test_per_task_mean_does_not_depend_on_how_many_rows_a_task_has() -> None:
    torch.manual_seed(1)
    scores = torch.randn(2, 4)
    weights = torch.ones(5)
    one, _, _ = multitask_loss(scores, torch.tensor([1, 2]), weights)
    # Repeating task 1's row three times leaves L_1 (a mean) and so the loss unchanged.
    repeated, _, _ = multitask_loss(scores[[0, 0, 0, 1]], torch.tensor([1, 1, 1, 2]), weights)
    torch.testing.assert_close(one, repeated)


def test_unknown_task_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        TrainConfig(task_weights={"podcasts": 1.0})


def test_cached_item_table_gives_the_same_scores() -> None:
    model = _model().eval()
    batch = _batch([1, 2, 3, 4, 1, 3], candidates=9)
    with torch.no_grad():
        plain = model(**batch)
        cached = model(**batch, item_table=model.item_table())
    torch.testing.assert_close(plain, cached, rtol=1e-5, atol=1e-5)


def test_negative_sampler_never_returns_the_positive() -> None:
    popularity = np.r_[0.0, np.arange(1, N_ITEMS, dtype=np.float64) ** 2]
    sampler = NegativeSampler(popularity, popular_share=0.5, generator=torch.Generator().manual_seed(0))
    positives = torch.full((200,), N_ITEMS - 1)  # the most popular item: often drawn
    negatives = sampler.sample(positives, 20)
    assert negatives.shape == (200, 20)
    assert not (negatives == positives[:, None]).any()
    assert (negatives == 0).any()  # accidental hits became padding rather than being resampled
    assert float(sampler.proposal.sum()) == pytest.approx(1.0, abs=1e-5)
    assert sampler.proposal[0] == 0  # the padding item is never proposed


def test_score_all_items_equals_forward_over_the_whole_catalogue() -> None:
    model = _model().eval()
    batch = _batch([1, 2, 3, 4, 2], candidates=1)
    batch["history"][0] = 0  # an empty history and query still score
    batch["query_tokens"][1] = 0
    every = torch.arange(1, N_ITEMS).expand(5, -1)
    with torch.no_grad():
        expected = model(**{**batch, "candidates": every})
        table = model.item_table()
        context = {k: v for k, v in batch.items() if k != "candidates"}
        fast = model.score_all_items(**context, item_table=table)
        uncached = model.score_all_items(**context)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(uncached, expected, rtol=1e-5, atol=1e-5)


def test_a_task_retires_after_task_patience_epochs_without_its_own_gain() -> None:
    from unirank.training.train import EpochLog, TrainResult, _stale_tasks

    names = {1: "notification", 2: "related_items", 5: "new_releases"}
    curves = {1: [0.10, 0.11, 0.12, 0.13], 2: [0.05, 0.06, 0.06, 0.07], 5: [0.17, 0.18, 0.16, 0.15]}
    result = TrainResult(model=_model())
    for epoch in range(4):
        result.history.append(
            EpochLog(epoch + 1, {}, {names[t]: c[epoch] for t, c in curves.items()}, 0.0, 0.0, {})
        )
    assert _stale_tasks(result, names, [1, 2, 5], patience=2) == [5]  # best at epoch 2, then worse
    assert _stale_tasks(result, names, [1, 2, 5], patience=0) == []  # off
    assert _stale_tasks(result, names, [5], patience=2) == []  # the last one keeps training
    assert _stale_tasks(result, names, [1, 2, 5], patience=4) == []  # not enough history yet


def test_new_release_rows_draw_negatives_from_what_was_new_at_their_time(artifact_dir: Path) -> None:
    from unirank.artifact import load_artifact
    from unirank.training.sampling import CandidatePoolNegatives

    catalog = load_artifact(artifact_dir).catalog
    pool = CandidatePoolNegatives(catalog, seed=0)
    years = np.asarray(catalog.release_year)
    newest = catalog.newest_release_year
    lasts = [newest, newest - 3, newest - 6]
    times = np.array([int(datetime(y, 7, 1, tzinfo=UTC).timestamp() * 1000) for y in lasts], dtype=np.int64)
    drawn, log_q = pool.new_releases(times, k=40)
    for row, last in enumerate(lasts):
        new = (years >= last - 2) & (years <= last) & (np.arange(len(years)) > 0)
        picked = drawn[row][drawn[row] > 0]
        assert len(picked) == 40, "a window with new items fills every slot"
        assert new[picked].all()
        assert log_q[row] == pytest.approx(np.log(40 / new.sum()))


def test_a_retired_task_is_held_at_its_best_snapshot_by_distillation() -> None:
    from unirank.training.loss import RetiredTeachers

    model = _model()
    batch = _batch([int(TaskType.SEARCH)] * 4 + [int(TaskType.CATEGORY)] * 4)
    candidates = batch.pop("candidates")
    correction = torch.zeros(candidates.shape)
    weights = torch.ones(len(TASKS) + 1)
    teachers = RetiredTeachers()
    teachers.add(int(TaskType.SEARCH), model, {k: v.clone() for k, v in model.state_dict().items()})
    scores = model(**batch, candidates=candidates)
    # The snapshot of the model itself: nothing to learn.
    assert teachers.loss(batch, candidates, correction, scores, weights).item() == pytest.approx(
        0.0, abs=1e-6
    )
    with torch.no_grad():  # the shared layers move on, as they do while the other tasks train
        for parameter in model.shared.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    scores = model(**batch, candidates=candidates)
    loss = teachers.loss(batch, candidates, correction, scores, weights)
    assert loss.item() > 1e-4
    loss.backward()
    grads = _head_grad_norms(model)
    assert (
        grads[TaskType.SEARCH - 1] > 0 and grads[TaskType.CATEGORY - 1] == 0
    )  # only the retired task's rows
    weights[int(TaskType.SEARCH)] = 0.0
    assert teachers.loss(batch, candidates, correction, scores, weights).item() == 0.0


def test_the_mean_does_not_stop_a_task_that_still_improves() -> None:
    from unirank.training.train import EpochLog, TrainResult, _improved_within

    result = TrainResult(model=_model())
    for epoch, (a, b) in enumerate([(0.30, 0.10), (0.25, 0.11), (0.20, 0.12)], start=1):
        result.history.append(EpochLog(epoch, {}, {"search": a, "category": b}, (a + b) / 2, 0.0, {}))
    assert _improved_within(result, "category", 2) and not _improved_within(result, "search", 2)


def test_retired_tasks_is_checked() -> None:
    with pytest.raises(ValueError, match="retired_tasks"):
        TrainConfig(retired_tasks="freeze")
