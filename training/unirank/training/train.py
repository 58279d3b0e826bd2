"""The multi-task training loop: one model, sampled-softmax per row, loss = sum_t w_t * L_t."""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from unirank.artifact import TASKS, Catalog
from unirank.model.net import ModelConfig, UniRankModel
from unirank.training import metrics
from unirank.training.config import TrainConfig
from unirank.training.dataset import Dataset, StratifiedTaskSampler
from unirank.training.evaluate import ModelScorer, rank_rows, sample_rows

Progress = Callable[[str], None]


def print_progress(message: str) -> None:
    """Progress goes to stderr so stdout stays the result (tables, JSON)."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class EpochLog:
    """What one epoch did: the curves in ``training_curves.png`` and the manifest come from these."""

    epoch: int
    train_loss: dict[str, float]
    """Mean per-task loss L_t over the epoch's steps (only steps where the task had rows)."""
    validation_ndcg: dict[str, float]
    selection_score: float
    """w_t-weighted mean of the validation NDCG@10: the early-stopping criterion."""
    seconds: float


@dataclass
class TrainResult:
    """The trained model (best validation epoch's weights, in eval mode) and its history."""

    model: UniRankModel
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    steps: int = 0


def build_model(catalog: Catalog, config: TrainConfig) -> UniRankModel:
    """A fresh model sized for ``catalog``; item content is copied into its buffers."""
    model_config = ModelConfig(
        n_items=len(catalog.items),
        n_users=len(catalog.users),
        n_tokens=len(catalog.tokens),
        n_categories=len(catalog.categories),
        n_tasks=len(TASKS),
        dim=config.dim,
        hidden=config.hidden,
        dropout=config.dropout,
    )
    return UniRankModel(
        model_config,
        title_tokens=catalog.title_token_matrix(),
        item_categories=catalog.category_matrix(),
        item_popularity=np.asarray(catalog.popularity, dtype=np.float32),
    )


def task_weight_vector(config: TrainConfig) -> torch.Tensor:
    """w indexed by task id (slot 0, the unspecified task, weighs nothing)."""
    weights = torch.zeros(len(TASKS) + 1)
    for spec in TASKS:
        weights[int(spec.task_type)] = config.task_weight(spec.name)
    return weights


def multitask_loss(
    scores: torch.Tensor, task: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum_t w_t * L_t, L_t per task id, rows per task id) for scores [B, N] with the positive at 0.

    L_t is the mean cross-entropy over task t's rows only, so a task's weight does not depend on
    how many of its rows a batch happens to hold, and a task absent from the batch adds nothing.
    """
    per_row = F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long), reduction="none")
    n_slots = weights.shape[0]
    sums = torch.zeros(n_slots, dtype=per_row.dtype).index_add(0, task, per_row)
    counts = torch.bincount(task, minlength=n_slots).to(per_row.dtype)
    per_task = sums / counts.clamp(min=1.0)
    return (weights * per_task).sum(), per_task, counts


class NegativeSampler:
    """Negatives from a mix of uniform and popularity^0.75 proposals, with their log-probabilities.

    Subtracting log q from sampled logits (log-q correction) keeps the loss an unbiased stand-in
    for the full softmax, so popular negatives sharpen the model without teaching it that
    popular items are bad.
    """

    def __init__(self, popularity: np.ndarray, popular_share: float, generator: torch.Generator) -> None:
        pop = np.asarray(popularity, dtype=np.float64)[1:]
        n = len(pop)
        weighted = np.power(pop + 1.0, 0.75)
        proposal = (1.0 - popular_share) / n + popular_share * weighted / weighted.sum()
        self.proposal = torch.as_tensor(np.r_[0.0, proposal], dtype=torch.float32)
        self.log_q = torch.log(self.proposal.clamp(min=1e-30))
        self.log_q[0] = 0.0
        self.generator = generator

    def sample(self, positives: torch.Tensor, k: int) -> torch.Tensor:
        """[B, k] item indices; accidental hits of the row's positive become padding (0)."""
        flat = torch.multinomial(
            self.proposal, positives.shape[0] * k, replacement=True, generator=self.generator
        )
        negatives = flat.view(-1, k)
        return torch.where(negatives == positives[:, None], torch.zeros_like(negatives), negatives)


def _trim_padding(values: torch.Tensor) -> torch.Tensor:
    """Drop trailing all-padding columns of a left-aligned [B, L] id matrix (keeping at least one)."""
    used = torch.nonzero((values != 0).any(dim=0)).flatten()
    width = int(used[-1]) + 1 if len(used) else 1
    return values[:, :width]


def _as_tensors(dataset: Dataset, rows: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        name: torch.from_numpy(np.ascontiguousarray(value[rows]))
        for name, value in dataset.inputs.as_dict().items()
    }


def validation_ndcg(
    model: UniRankModel, dataset: Dataset, rows_by_task: dict[int, np.ndarray]
) -> dict[int, float]:
    """Full-catalogue NDCG@10 per task id on fixed validation rows."""
    scorer = ModelScorer(model)
    out = {}
    for task, rows in rows_by_task.items():
        ranks, _, _ = rank_rows(scorer, dataset, rows)
        out[task] = metrics.ndcg_at_k(ranks)
    return out


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the caller's setting."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_model(
    dataset: Dataset, catalog: Catalog, config: TrainConfig, progress: Progress | None = print_progress
) -> TrainResult:
    """Train on the dataset's train split, early-stopping on its validation split."""
    with torch_threads(config.threads):
        return _train(dataset, catalog, config, progress)


def _train(dataset: Dataset, catalog: Catalog, config: TrainConfig, progress: Progress | None) -> TrainResult:
    say = progress or (lambda _message: None)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_model(catalog, config)
    weights = task_weight_vector(config)
    names = {int(spec.task_type): spec.name for spec in TASKS}

    train_rows = dataset.rows("train")
    if not len(train_rows):
        raise ValueError("the dataset has no training rows")
    tensors = _as_tensors(dataset, train_rows)
    ratios = None
    if config.task_ratios is not None:
        ratios = {int(spec.task_type): config.task_ratios.get(spec.name, 0.0) for spec in TASKS}
        present = set(np.unique(dataset.task[train_rows]).tolist())
        ratios = {t: r for t, r in ratios.items() if t in present}
    sampler = StratifiedTaskSampler(dataset.task[train_rows], config.batch_size, ratios, seed=config.seed)
    negatives = NegativeSampler(np.asarray(catalog.popularity), config.popular_negative_share, generator)
    validation_rows = {
        t: sample_rows(dataset.rows("validation", t), config.validation_rows_per_task, config.seed + t)
        for t in names
    }
    validation_rows = {t: rows for t, rows in validation_rows.items() if len(rows) and weights[t] > 0}
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )

    result = TrainResult(model=model)
    best_score, best_state, stale = -np.inf, copy.deepcopy(model.state_dict()), 0
    say(
        f"training on {len(train_rows)} rows ({sampler.steps_per_epoch} steps/epoch, "
        f"batch {config.batch_size}, {config.negatives} negatives, rows per batch by task "
        + ", ".join(f"{names[t]}={q}" for t, q in sampler.quota.items())
        + ")"
    )
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros(len(TASKS) + 1)
        loss_steps = torch.zeros(len(TASKS) + 1)
        for step, index in enumerate(sampler.epoch(), start=1):
            batch = {name: value[torch.from_numpy(index)] for name, value in tensors.items()}
            positives = batch.pop("candidates")[:, 0]
            for name in ("history", "query_tokens"):  # same scores, less padding to compare
                batch[name] = _trim_padding(batch[name])
            if config.user_dropout > 0:
                hide = torch.rand(positives.shape[0], generator=generator) < config.user_dropout
                batch["user"] = torch.where(hide, torch.zeros_like(batch["user"]), batch["user"])
            candidates = torch.cat([positives[:, None], negatives.sample(positives, config.negatives)], dim=1)
            item_table = model.item_table()
            scores = model(**batch, candidates=candidates, item_table=item_table)
            scores = scores - negatives.log_q[candidates]
            loss, per_task, counts = multitask_loss(scores, batch["task"], weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            in_batch = (counts > 0).to(loss_sum.dtype)
            loss_sum += per_task.detach() * in_batch
            loss_steps += in_batch
            result.steps += 1
            if config.log_every and step % config.log_every == 0:
                say(f"  epoch {epoch} step {step}/{sampler.steps_per_epoch} loss {loss.item():.4f}")
        train_loss = {names[t]: float(loss_sum[t] / loss_steps[t]) for t in names if loss_steps[t] > 0}
        ndcg = validation_ndcg(model, dataset, validation_rows)
        total_weight = sum(float(weights[t]) for t in ndcg) or 1.0
        selection = sum(float(weights[t]) * v for t, v in ndcg.items()) / total_weight
        seconds = time.perf_counter() - started
        result.history.append(
            EpochLog(
                epoch=epoch,
                train_loss=train_loss,
                validation_ndcg={names[t]: v for t, v in ndcg.items()},
                selection_score=selection,
                seconds=seconds,
            )
        )
        improved = selection > best_score
        say(
            f"epoch {epoch:>2}/{config.epochs} {seconds:5.1f}s  loss "
            + " ".join(f"{n}={v:.3f}" for n, v in train_loss.items())
            + "  val ndcg@10 "
            + " ".join(f"{names[t]}={v:.3f}" for t, v in ndcg.items())
            + f"  mean={selection:.4f}{' *' if improved else ''}"
        )
        if improved:
            best_score, best_state, stale = selection, copy.deepcopy(model.state_dict()), 0
            result.best_epoch = epoch
        else:
            stale += 1
            if stale >= config.patience:
                say(f"early stop: no validation gain for {stale} epochs; keeping epoch {result.best_epoch}")
                break
    model.load_state_dict(best_state)
    model.eval()
    return result
