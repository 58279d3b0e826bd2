"""The multi-task training loop: one model, sampled softmax per row, loss = sum_t w_t * L_t.

Batches are stratified by task (fixed shares per batch); each row scores its positive (one drawn
from the row's positives) against sampled negatives (popularity-mixed proposal, log-q corrected)
and optionally the batch's other positives; task weights are static or learned (uncertainty);
training stops early on the validation NDCG@10 of the tasks being trained, keeping the best epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unirank.artifact import TASKS, Catalog
from unirank.model.net import ModelConfig, UniRankModel
from unirank.training.baselines import CoEngagement
from unirank.training.calibration import calibrate_heads
from unirank.training.config import TrainConfig
from unirank.training.dataset import Dataset, StratifiedTaskSampler
from unirank.training.distributed import Distributed
from unirank.training.evaluate import TimeCache, sample_rows, validation_ndcg
from unirank.training.examples import TrainingPlays
from unirank.training.item_init import init_from_als, mf_item_factors
from unirank.training.loss import RetiredTeachers, multitask_loss, task_weight_vector
from unirank.training.sampling import BatchMaker, task_ratios

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
    effective_weights: dict[str, float] = field(default_factory=dict)
    """The weight each task's loss had at the end of the epoch (w_t, times exp(-s_t) if learned)."""


@dataclass
class TrainResult:
    """The trained model (best validation epoch's weights, in eval mode) and its history."""

    model: UniRankModel
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    steps: int = 0
    seconds: float = 0.0
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per task, what :func:`calibrate_heads` added to each cross feature's weight."""


def neighbour_arrays(
    co_engagement: CoEngagement, n_items: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per item (row 0 = padding) its ``k`` most co-engaged items (0-padded), their log counts scaled
    to [0, 1], and each count's share of the item's total co-engagement."""
    neighbours = np.zeros((n_items + 1, k), dtype=np.int64)
    counts = np.zeros((n_items + 1, k), dtype=np.float64)
    totals = np.ones(n_items + 1, dtype=np.float64)
    for item in range(1, min(n_items + 1, len(co_engagement.indptr) - 1)):
        ids, n = co_engagement.row(item)
        neighbours[item, : min(k, len(ids))] = ids[:k]
        counts[item, : min(k, len(n))] = n[:k]
        totals[item] = max(float(n.sum()), 1.0)
    weights = np.log1p(counts)
    weights = weights / max(float(weights.max()), 1e-9)
    return neighbours, weights.astype(np.float32), (counts / totals[:, None]).astype(np.float32)


def build_model(
    catalog: Catalog,
    config: TrainConfig,
    co_engagement: CoEngagement | None = None,
    item_factors: np.ndarray | None = None,
) -> UniRankModel:
    """A fresh model sized for ``catalog``; item content (and co-engagement) goes into its buffers,
    and with ``config.mf_factors`` the MF score's ``item_factors`` (zeros if not given)."""
    model_config = ModelConfig(
        n_items=len(catalog.items),
        n_users=len(catalog.users),
        n_tokens=len(catalog.tokens),
        n_categories=len(catalog.categories),
        n_tasks=len(TASKS),
        dim=config.dim,
        hidden=config.hidden,
        dropout=config.dropout,
        use_task_type=config.use_task_type,
        architecture=config.architecture,
        n_experts=config.n_experts,
        impute_context=config.impute_context,
        time_features=config.time_features,
        recent_half_life_days=config.recent_half_life_days,
        mf_factors=config.mf_factors,
    )
    neighbours = weights = shares = None
    if co_engagement is not None and config.co_engagement_neighbours > 0:
        neighbours, weights, shares = neighbour_arrays(
            co_engagement, catalog.n_items, config.co_engagement_neighbours
        )
    return UniRankModel(
        model_config,
        title_tokens=catalog.title_token_matrix(),
        item_categories=catalog.category_matrix(),
        item_popularity=np.asarray(catalog.popularity, dtype=np.float32),
        item_neighbours=neighbours,
        item_neighbour_weights=weights,
        item_neighbour_shares=shares,
        item_factors=item_factors,
    )


def _fresh_model(
    catalog: Catalog, config: TrainConfig, co_engagement: CoEngagement | None, plays: TrainingPlays | None
) -> UniRankModel:
    """:func:`build_model`, with the MF score's table and the ALS init fitted on ``plays``."""
    if plays is None and (config.item_init != "random" or config.mf_factors):
        raise ValueError(
            f"item_init {config.item_init!r} and mf_factors {config.mf_factors} need the training plays "
            "(train_model's plays)"
        )
    factors = (
        mf_item_factors(plays, config.mf_factors, config.seed)
        if plays is not None and config.mf_factors
        else None
    )
    model = build_model(catalog, config, co_engagement, factors)
    if plays is not None and config.item_init != "random":
        init_from_als(model, plays, config.item_init, config.seed)
    return model


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


class ProgressBar:
    """One epoch's progress with running per-task losses.

    A tqdm bar on a terminal; elsewhere (logs, CI, a parent process reading stderr) a line every
    ``every_s`` seconds, so long runs show they are alive and short ones stay quiet.
    """

    WIDTH = 24

    def __init__(self, say: Progress, total: int, label: str, live: bool, every_s: float = 15.0) -> None:
        self.say, self.total, self.label, self.live = say, max(total, 1), label, live
        self.started = time.perf_counter()
        self.every_s = every_s
        self._last_line = self.started
        self._bar: Any = None
        if live:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=label, unit="step", file=sys.stderr, leave=False)

    def update(self, step: int, losses: dict[str, float]) -> None:
        text = " ".join(f"{name}={value:.3f}" for name, value in losses.items())
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(f"loss {text}", refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line < self.every_s or step == self.total:
            return
        filled = round(step / self.total * self.WIDTH)
        self._last_line = now
        self.say(
            f"{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {step}/{self.total} "
            f"{now - self.started:5.1f}s loss {text}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def train_model(
    dataset: Dataset,
    catalog: Catalog,
    config: TrainConfig,
    progress: Progress | None = print_progress,
    co_engagement: CoEngagement | None = None,
    initial: UniRankModel | None = None,
    distributed: Distributed | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    plays: TrainingPlays | None = None,
) -> TrainResult:
    """Train on the dataset's train split, early-stopping on its validation split.

    ``co_engagement`` (from the training split) feeds the model's co-engagement feature; ``plays``
    (the training split's user x item plays) is what ``item_init`` other than ``random`` fits.
    ``initial`` is a model to continue from (a warm start) instead of a fresh one; it must have been
    built for ``catalog``. With ``distributed`` this process trains its share of every batch under
    DDP; only the primary process's result holds the selected weights. ``on_epoch`` sees each
    epoch's log after its validation (a tuner prunes a trial by raising from it).
    """
    with torch_threads(config.threads):
        return _train(
            dataset, catalog, config, progress, co_engagement, initial, distributed, on_epoch, plays
        )


def _train(
    dataset: Dataset,
    catalog: Catalog,
    config: TrainConfig,
    progress: Progress | None,
    co_engagement: CoEngagement | None,
    initial: UniRankModel | None,
    distributed: Distributed | None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    plays: TrainingPlays | None = None,
) -> TrainResult:
    say = progress or (lambda _message: None)
    live = progress is print_progress and sys.stderr.isatty()
    run_started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = initial if initial is not None else _fresh_model(catalog, config, co_engagement, plays)
    device = distributed.device if distributed is not None else torch.device(config.device)
    model.to(device)
    primary = distributed is None or distributed.primary
    weights = task_weight_vector(config).to(device)
    names = {int(spec.task_type): spec.name for spec in TASKS}

    train_rows = dataset.rows("train")
    trained = [t for t in names if weights[t] > 0]
    train_rows = train_rows[np.isin(dataset.task[train_rows], trained)]
    if not len(train_rows):
        raise ValueError("the dataset has no training rows for the tasks being trained")
    make_batch = BatchMaker(dataset, catalog, train_rows, config, generator)
    ratios = task_ratios(config, dataset.task[train_rows])
    sampler = StratifiedTaskSampler(dataset.task[train_rows], config.batch_size, ratios, seed=config.seed)
    # An epoch is the same number of steps whichever tasks are trained: a single-task model gets
    # the unified model's budget (steps x batch size), all of it on its own task.
    sampler.steps_per_epoch = config.steps_per_epoch or max(
        1, math.ceil(len(dataset.rows("train")) / config.batch_size)
    )
    validation_rows = {
        t: sample_rows(dataset.rows("validation", t), config.validation_rows_per_task, config.seed + t)
        for t in names
    }
    validation_rows = {t: rows for t, rows in validation_rows.items() if len(rows) and weights[t] > 0}
    time_cache: TimeCache = {}  # the validation rows' time features, computed at the first pass
    log_variance = None
    parameters = [{"params": list(model.parameters()), "weight_decay": config.weight_decay}]
    if config.task_weighting == "uncertainty":
        log_variance = torch.zeros(len(TASKS) + 1, requires_grad=True, device=device)
        parameters.append({"params": [log_variance], "weight_decay": 0.0})
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    scorer: torch.nn.Module = model if distributed is None else distributed.wrap(model)
    shards = 1 if distributed is None else distributed.world_size

    result = TrainResult(model=model)
    best_state = copy.deepcopy(model.state_dict())
    active = [t for t in trained if t in validation_rows]
    # Each task's own best weights, so a retired task can be distilled from its best snapshot.
    task_best: dict[int, dict[str, torch.Tensor]] = {}
    teachers = RetiredTeachers()
    distil = config.retired_tasks == "distil" and distributed is None
    loss_weights = weights.clone()
    say(
        f"training on {len(train_rows)} rows ({sampler.steps_per_epoch} steps/epoch"
        + (f", at most {config.max_steps} steps" if config.max_steps else "")
        + f", batch {config.batch_size}, {config.negatives} negatives"
        + (f" + {config.pool_negatives} from the row's pool" if config.pool_negatives else "")
        + (" + in-batch" if config.in_batch_negatives else "")
        + f", {config.architecture}, {config.task_weighting} task weights, rows per batch by task "
        + ", ".join(f"{names[t]}={q}" for t, q in sampler.quota.items())
        + (
            f"; {shards} processes ({distributed.backend}) of {len(distributed.rows(config.batch_size))} rows"
            if distributed is not None
            else ""
        )
        + (f", on {device}" if device.type != "cpu" else "")
        + ")"
    )
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros(len(TASKS) + 1, device=device)
        loss_steps = torch.zeros(len(TASKS) + 1, device=device)
        bar = ProgressBar(say, sampler.steps_per_epoch, f"epoch {epoch:>2}/{config.epochs}", live)
        for step, index in enumerate(sampler.epoch(), start=1):
            part = None if distributed is None else distributed.rows(len(index))
            batch, candidates, correction = make_batch(index, part)
            batch = {name: value.to(device) for name, value in batch.items()}
            candidates, correction = candidates.to(device), correction.to(device)
            batch_counts = None
            if distributed is not None:
                batch_counts = torch.bincount(make_batch.tensors["task"][index], minlength=len(weights))
                batch_counts = batch_counts.to(device)
            item_table = model.item_table()
            scores = scorer(**batch, candidates=candidates, item_table=item_table) - correction
            loss, per_task, counts = multitask_loss(
                scores, batch["task"], loss_weights, log_variance, batch_counts, shards
            )
            if teachers.tasks:
                loss = loss + teachers.loss(batch, candidates, correction, scores, weights)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over the processes; each holds its share of the batch's loss.
            (loss * shards).backward()
            per_task = per_task.detach()
            if distributed is not None:
                if log_variance is not None and log_variance.grad is not None:
                    distributed.sum_(log_variance.grad).div_(shards)  # not a module parameter
                distributed.sum_(per_task)
            optimizer.step()
            in_batch = (counts > 0).to(loss_sum.dtype)
            loss_sum += per_task * in_batch
            loss_steps += in_batch
            result.steps += 1
            if config.log_every and step % config.log_every == 0 and not live:
                say(f"  epoch {epoch} step {step}/{sampler.steps_per_epoch} loss {loss.item() * shards:.4f}")
            bar.update(
                step,
                {names[t]: float(loss_sum[t] / loss_steps[t]) for t in names if loss_steps[t] > 0},
            )
            if config.max_steps is not None and result.steps >= config.max_steps:
                break
        bar.close()
        out_of_steps = config.max_steps is not None and result.steps >= config.max_steps
        stop = out_of_steps
        if primary:
            stop, improved = _end_epoch(
                epoch,
                started,
                model,
                dataset,
                catalog,
                config,
                validation_rows,
                weights,
                names,
                trained,
                active,
                loss_sum,
                loss_steps,
                log_variance,
                result,
                say,
                time_cache,
            )
            if improved:
                best_state = copy.deepcopy(model.state_dict())
            if distil:
                improved_tasks = _improved_tasks(result, names, active)
                if improved_tasks:
                    state = best_state if improved else copy.deepcopy(model.state_dict())
                    task_best.update(dict.fromkeys(improved_tasks, state))
            stop = stop or out_of_steps
            if on_epoch is not None:
                on_epoch(result.history[-1])  # e.g. a tuner's pruning, which may raise to end the run
        if distributed is not None:
            stop = distributed.decide(stop)
        if stop:
            break
        retire = _stale_tasks(result, names, active, config.task_patience) if primary else []
        if distributed is not None:
            retire = [t for t in active if distributed.decide(t in retire)]
        if retire:
            # A task that stopped improving on validation stops training (its rows leave the
            # batches, its head gets no gradient) while the others go on: a small task no longer
            # overfits, dragging the mean down and stopping everyone early. It still counts in
            # the selection, so a retired task that the others' training hurts is seen.
            active = [t for t in active if t not in retire]
            loss_weights[retire] = 0.0
            if distil:
                # The shared layers go on changing under a retired task's head: its rows stay in
                # the batches, learning its best snapshot's scores instead of the labels it
                # overfitted, so it keeps what it had instead of drifting.
                for t in retire:
                    teachers.add(t, model, task_best.get(t, best_state))
            else:
                # The retired tasks' share of every batch goes to the others, in their proportions.
                shares = {t: 0.0 if t in retire else r for t, r in sampler.ratios.items()}
                steps = sampler.steps_per_epoch
                sampler = StratifiedTaskSampler(
                    dataset.task[train_rows], config.batch_size, shares, seed=config.seed + 1000 * epoch
                )
                sampler.steps_per_epoch = steps
            say(
                "retired from training (no validation gain for "
                f"{config.task_patience} epochs{'; distilled from its best epoch' if distil else ''}): "
                + ", ".join(names[t] for t in retire)
            )
    if primary:
        model.load_state_dict(best_state)
    model.to("cpu")
    model.eval()
    if primary and config.calibrate_heads:
        result.calibration = calibrate_heads(model, dataset, validation_rows, catalog, names, time_cache)
        if any(result.calibration.values()):
            say(
                "calibrated on validation: "
                + "; ".join(
                    f"{task} " + " ".join(f"{f}+{v:.2f}" for f, v in added.items())
                    for task, added in result.calibration.items()
                    if added
                )
            )
    result.seconds = time.perf_counter() - run_started
    return result


def _improved_tasks(result: TrainResult, names: dict[int, str], active: list[int]) -> list[int]:
    """Active tasks whose own validation NDCG reached a new best in the latest epoch."""
    latest, earlier = result.history[-1].validation_ndcg, result.history[:-1]
    return [
        t
        for t in active
        if names[t] in latest
        and latest[names[t]]
        > max((log.validation_ndcg.get(names[t], -np.inf) for log in earlier), default=-np.inf)
    ]


def _stale_tasks(result: TrainResult, names: dict[int, str], active: list[int], patience: int) -> list[int]:
    """Active tasks whose own validation NDCG has not improved for ``patience`` epochs (never the
    last one still training; none with ``patience`` 0)."""
    if patience < 1 or len(active) < 2 or len(result.history) <= patience:
        return []
    stale = []
    for t in active:
        curve = [log.validation_ndcg.get(names[t], -np.inf) for log in result.history]
        if max(curve[-patience:]) <= max(curve[:-patience]):
            stale.append(t)
    return stale[: len(active) - 1]


def _end_epoch(
    epoch: int,
    started: float,
    model: UniRankModel,
    dataset: Dataset,
    catalog: Catalog,
    config: TrainConfig,
    validation_rows: dict[int, np.ndarray],
    weights: torch.Tensor,
    names: dict[int, str],
    trained: list[int],
    active: list[int],
    loss_sum: torch.Tensor,
    loss_steps: torch.Tensor,
    log_variance: torch.Tensor | None,
    result: TrainResult,
    say: Progress,
    time_cache: TimeCache | None = None,
) -> tuple[bool, bool]:
    """Validate (on the CPU), log the epoch and decide: (stop early, this epoch is the best so far)."""
    train_loss = {names[t]: float(loss_sum[t] / loss_steps[t]) for t in names if loss_steps[t] > 0}
    on_cpu = next(model.parameters()).device.type == "cpu"
    scored = model if on_cpu else copy.deepcopy(model).cpu()
    ndcg = validation_ndcg(scored, dataset, validation_rows, catalog, time_cache)
    total_weight = sum(float(weights[t]) for t in ndcg) or 1.0
    selection = sum(float(weights[t]) * v for t, v in ndcg.items()) / total_weight
    seconds = time.perf_counter() - started
    effective = {names[t]: float(weights[t]) for t in trained}
    if log_variance is not None:
        learned = torch.exp(-log_variance.detach())
        effective = {names[t]: float(weights[t] * learned[t]) for t in trained}
    best_score = max((log.selection_score for log in result.history), default=-np.inf)
    result.history.append(
        EpochLog(
            epoch=epoch,
            train_loss=train_loss,
            validation_ndcg={names[t]: v for t, v in ndcg.items()},
            selection_score=selection,
            seconds=seconds,
            effective_weights=effective,
        )
    )
    improved = selection > best_score
    say(
        f"epoch {epoch:>2}/{config.epochs} {seconds:5.1f}s  loss "
        + " ".join(f"{n}={v:.3f}" for n, v in train_loss.items())
        + "  val ndcg@10 "
        + " ".join(f"{names[t]}={v:.3f}" for t, v in ndcg.items())
        + f"  mean={selection:.4f}{' *' if improved else ''}"
        + (
            "  weights " + " ".join(f"{n}={w:.2f}" for n, w in effective.items())
            if log_variance is not None
            else ""
        )
    )
    if improved:
        result.best_epoch = epoch
        return False, True
    stale = epoch - result.best_epoch
    if stale >= config.patience:
        # The mean has stalled, but a task that is still improving on its own goes on (the
        # stalled ones retire): the mean must not end the training of a task that still learns.
        learning = [names[t] for t in active if _improved_within(result, names[t], config.patience)]
        if learning and config.task_patience > 0:
            say(f"no validation gain of the mean for {stale} epochs; still improving: {', '.join(learning)}")
            return False, False
        say(f"early stop: no validation gain for {stale} epochs; keeping epoch {result.best_epoch}")
        return True, False
    return False, False


def _improved_within(result: TrainResult, task: str, epochs: int) -> bool:
    """The task's own best validation NDCG is in the latest ``epochs`` epochs (and beats before)."""
    curve = [log.validation_ndcg.get(task, -np.inf) for log in result.history]
    return len(curve) > epochs and max(curve[-epochs:]) > max(curve[:-epochs])
