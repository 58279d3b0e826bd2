"""The multi-task loss: sum_t w_t * L_t over per-task mean cross-entropies (sampled softmax, the
positive at column 0), with static task weights or learned uncertainty weighting, and the
distillation loss that holds retired tasks at their best snapshot."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from unirank.artifact import TASKS
from unirank.model.net import UniRankModel
from unirank.training.config import TrainConfig


def task_weight_vector(config: TrainConfig) -> torch.Tensor:
    """w indexed by task id (slot 0, the unspecified task, weighs nothing)."""
    weights = torch.zeros(len(TASKS) + 1)
    for spec in TASKS:
        weights[int(spec.task_type)] = config.task_weight(spec.name)
    return weights


def multitask_loss(
    scores: torch.Tensor,
    task: torch.Tensor,
    weights: torch.Tensor,
    log_variance: torch.Tensor | None = None,
    batch_counts: torch.Tensor | None = None,
    shards: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum_t w_t * L_t, L_t per task id, rows per task id) for scores [B, N] with the positive at 0.

    L_t is the mean cross-entropy over task t's rows only, so a task's weight does not depend on
    how many of its rows a batch happens to hold, and a task absent from the batch adds nothing.
    With ``log_variance`` s (learned, one per task id) each term is w_t * (exp(-s_t) L_t + s_t / 2):
    the homoscedastic-uncertainty weighting of Kendall et al. (2018).

    Data-parallel training scores one batch in ``shards`` parts: ``scores`` and ``task`` are this
    process's rows, ``batch_counts`` the rows per task id of the whole batch. Every returned value
    is then this part's share (L_t divides by the whole batch's count), and the shares of all parts
    add up to the loss of the whole batch, so its gradient is the single-process gradient.
    """
    per_row = F.cross_entropy(
        scores, torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device), reduction="none"
    )
    n_slots = weights.shape[0]
    sums = torch.zeros(n_slots, dtype=per_row.dtype, device=scores.device).index_add(0, task, per_row)
    counts = torch.bincount(task, minlength=n_slots) if batch_counts is None else batch_counts
    counts = counts.to(per_row.dtype)
    per_task = sums / counts.clamp(min=1.0)
    if log_variance is None:
        return (weights * per_task).sum(), per_task, counts
    present = (counts > 0).to(per_row.dtype)
    terms = torch.exp(-log_variance) * per_task + 0.5 * log_variance / shards
    return (weights * present * terms).sum(), per_task, counts


class RetiredTeachers:
    """Frozen best snapshots of retired tasks, and the distillation loss that holds them there.

    A retired task's rows stay in the batches; their loss is the KL divergence from the
    snapshot's softmax over the row's candidates (log-q corrected alike) to the model's, weighted
    by w_t: the head and the shared layers may change, the task's ranking may not drift.
    """

    def __init__(self) -> None:
        self.teachers: dict[int, tuple[UniRankModel, torch.Tensor]] = {}

    @property
    def tasks(self) -> list[int]:
        return list(self.teachers)

    def add(self, task: int, model: UniRankModel, state: dict[str, torch.Tensor]) -> None:
        teacher = copy.deepcopy(model)
        teacher.load_state_dict(state)
        teacher.eval()
        teacher.requires_grad_(False)
        with torch.no_grad():
            self.teachers[task] = (teacher, teacher.item_table())

    def loss(
        self,
        batch: dict[str, torch.Tensor],
        candidates: torch.Tensor,
        correction: torch.Tensor,
        scores: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        total = scores.new_zeros(())
        for task, (teacher, item_table) in self.teachers.items():
            rows = torch.nonzero(batch["task"] == task).flatten()
            if not len(rows):
                continue
            with torch.no_grad():
                inputs = {name: value[rows] for name, value in batch.items()}
                target = teacher(**inputs, candidates=candidates[rows], item_table=item_table)
                target = F.log_softmax(target - correction[rows], dim=1)
            student = F.log_softmax(scores[rows], dim=1)
            kl = F.kl_div(student, target, log_target=True, reduction="batchmean")
            total = total + weights[task] * kl
        return total
