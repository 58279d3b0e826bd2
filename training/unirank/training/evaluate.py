"""Per-task offline evaluation: full ranking of each task's rows over its candidate set, model vs baselines.

A task's candidate set is the whole catalogue, except for category rows (the category's items) and
new-release rows (the items new at the row's time); items the use-case never recommends (the
anchor; for notification, category, new-release and derived related rows, everything the user
already played) are excluded before ranking.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unirank.artifact import TASKS, Catalog, ModelInputs, TaskType, metrics
from unirank.artifact.catalog import is_new_release
from unirank.artifact.histogram import REFERENCE_BINS, quantile_histogram
from unirank.model.net import UniRankModel
from unirank.training.baselines import CoEngagement, PopularityScorer, TaskAwarePopularityScorer
from unirank.training.dataset import Dataset
from unirank.training.progress import progress_bar
from unirank.training.scoring import Batch, Scorer


class CandidateSets:
    """Restricts each row to its task's candidate set: category rows rank their category's items,
    new-release rows the items new at the row's time."""

    def __init__(self, catalog: Catalog) -> None:
        cats = catalog.category_matrix()[1:]
        self.members = np.zeros((len(catalog.categories), catalog.n_items), dtype=bool)
        rows = np.repeat(np.arange(catalog.n_items), cats.shape[1])
        self.members[cats.ravel(), rows] = True
        self.members[0] = True  # no category: no restriction
        self.release_year = np.asarray(catalog.release_year[1:], dtype=np.int64)
        self.newest_year = catalog.newest_release_year

    def apply(self, scores: np.ndarray, inputs: ModelInputs, timestamp_ms: np.ndarray) -> None:
        """Set ``scores`` [B, n_items] to -inf outside each row's set; ``timestamp_ms``: each row's time."""
        rows = np.flatnonzero(inputs.task == TaskType.CATEGORY)
        if len(rows):
            _outside(scores, rows, ~self.members[inputs.category[rows]])
        rows = np.flatnonzero(inputs.task == TaskType.NEW_RELEASES)
        if len(rows):
            new = is_new_release(self.release_year[None, :], timestamp_ms[rows, None], self.newest_year)
            _outside(scores, rows, ~new)


def _outside(scores: np.ndarray, rows: np.ndarray, outside: np.ndarray) -> None:
    block = scores[rows]
    block[outside] = -np.inf
    scores[rows] = block


MODEL = "model"
POPULARITY = "popularity"
POPULARITY_TASK_AWARE = "popularity_task_aware"
METRIC_ORDER: tuple[str, ...] = (
    f"recall@{metrics.K_DEFAULT}",
    f"ndcg@{metrics.K_DEFAULT}",
    "mrr",
    f"coverage@{metrics.K_DEFAULT}",
)


def trim_padding(values: np.ndarray) -> np.ndarray:
    """Drop trailing all-padding columns of a left-aligned [B, L] id matrix (keeping at least one).

    Masked means and the lexical overlap ignore padding, so scores are unchanged; a batch of
    category rows then compares one padding token per title word instead of eight.
    """
    used = np.flatnonzero((values != 0).any(axis=0))
    width = int(used[-1]) + 1 if len(used) else 1
    return values[:, :width]


TimeCache = dict[bytes, torch.Tensor | None]
"""Every item's time features per batch of rows (keyed by the rows), for one model's config: they
depend on the rows' times and the events only, so a training run's validation passes and its
calibration rank the same validation rows with features computed once."""


class ModelScorer:
    """Scores every catalogue item with the model, item vectors computed once.

    ``time_cache`` (one per model config) keeps the items' time features of each batch of rows, for
    callers that rank the same rows again (each epoch's validation)."""

    def __init__(self, model: UniRankModel, time_cache: TimeCache | None = None) -> None:
        self.model = model.eval()
        self.time_cache = time_cache
        with torch.no_grad():
            self.item_table = model.item_table()

    def __call__(self, batch: Batch) -> np.ndarray:
        inputs = batch.inputs
        with torch.no_grad():
            scores = self.model.score_all_items(
                torch.from_numpy(inputs.task),
                torch.from_numpy(inputs.user),
                torch.from_numpy(np.ascontiguousarray(trim_padding(inputs.history))),
                torch.from_numpy(np.ascontiguousarray(trim_padding(inputs.query_tokens))),
                torch.from_numpy(inputs.anchor_item),
                torch.from_numpy(inputs.category),
                item_table=self.item_table,
                item_time=self._item_time(batch),
            )
        return scores.numpy()

    def _item_time(self, batch: Batch) -> torch.Tensor | None:
        if self.time_cache is None:
            return all_items_time(self.model, batch.dataset, batch.rows)
        key = np.ascontiguousarray(batch.rows, dtype=np.int64).tobytes()
        if key not in self.time_cache:
            self.time_cache[key] = all_items_time(self.model, batch.dataset, batch.rows)
        return self.time_cache[key]


def all_items_time(model: UniRankModel, dataset: Dataset, rows: np.ndarray) -> torch.Tensor | None:
    """[B, n_items - 1, 3]: every real item's time features at each row's time, for a model with
    time features (None for one without)."""
    if not model.config.time_features:
        return None
    if dataset.events is None:
        raise ValueError("a model with time features needs a dataset with its events")
    history = dataset.events.history(model.config.recent_half_life_days)
    every_item = np.arange(1, model.config.n_items, dtype=np.int64)[None, :]  # one row, shared
    return torch.from_numpy(history.features(every_item, dataset.timestamp_ms[rows]))


def sample_rows(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``rows``: a seeded subset, kept in their original order."""
    if len(rows) <= limit:
        return rows
    picked = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
    return rows[np.sort(picked)]


def chunk_inputs(dataset: Dataset, rows: np.ndarray) -> ModelInputs:
    return ModelInputs(**{name: value[rows] for name, value in dataset.inputs.as_dict().items()})


def _apply_exclusions(scores: np.ndarray, dataset: Dataset, rows: np.ndarray) -> None:
    parts = [dataset.excluded(int(r)) for r in rows]
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    if not lengths.any():
        return
    local = np.repeat(np.arange(len(rows)), lengths)
    scores[local, np.concatenate(parts) - 1] = -np.inf


@dataclass
class Ranked:
    """What ranking some rows produced: each positive's rank (CSR by row), the top k, the best score."""

    ranks: np.ndarray
    indptr: np.ndarray
    top: np.ndarray
    """int64 [R, k] item indices of each row's top k (0 where fewer than k items were rankable)."""
    best: np.ndarray

    def metrics(self, n_items: int, k: int = metrics.K_DEFAULT) -> dict[str, float]:
        return metrics.summarise(self.ranks, self.top, n_items, k, self.indptr)


def rank_rows(
    scorer: Scorer,
    dataset: Dataset,
    rows: np.ndarray,
    candidates: CandidateSets | None = None,
    k: int = metrics.K_DEFAULT,
    chunk: int = 128,
) -> Ranked:
    """Rank each row's candidate set (the full catalogue unless ``candidates`` restricts it)."""
    ranks, lengths, tops, best = [], [], [], []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        inputs = chunk_inputs(dataset, part)
        scores = np.array(scorer(Batch(inputs, dataset, part)), dtype=np.float64)
        if candidates is not None:
            candidates.apply(scores, inputs, dataset.timestamp_ms[part])
        _apply_exclusions(scores, dataset, part)
        positives = [dataset.positives(int(r)) for r in part]
        indptr = np.zeros(len(part) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in positives], out=indptr[1:])
        ranks.append(metrics.positive_ranks_csr(scores, indptr, np.concatenate(positives) - 1))
        lengths.append(np.diff(indptr))
        top = metrics.top_k(scores, k)
        top_scores = np.take_along_axis(scores, top, axis=1)
        tops.append(np.where(np.isneginf(top_scores), 0, top + 1))
        best.append(scores.max(axis=1))
    if not ranks:
        empty = np.zeros(0, dtype=np.int64)
        return Ranked(empty, np.zeros(1, dtype=np.int64), np.zeros((0, k), dtype=np.int64), np.zeros(0))
    all_lengths = np.concatenate(lengths)
    indptr = np.zeros(len(all_lengths) + 1, dtype=np.int64)
    np.cumsum(all_lengths, out=indptr[1:])
    return Ranked(np.concatenate(ranks), indptr, np.concatenate(tops), np.concatenate(best))


def validation_ndcg(
    model: UniRankModel,
    dataset: Dataset,
    rows_by_task: dict[int, np.ndarray],
    catalog: Catalog,
    time_cache: TimeCache | None = None,
) -> dict[int, float]:
    """NDCG@10 per task id on fixed validation rows, full ranking over each task's candidate set."""
    scorer = ModelScorer(model, time_cache)
    candidates = CandidateSets(catalog)
    out = {}
    for task, rows in rows_by_task.items():
        ranked = rank_rows(scorer, dataset, rows, candidates)
        out[task] = metrics.ndcg_at_k(ranked.ranks, indptr=ranked.indptr)
    return out


def evaluation_rows(dataset: Dataset, split: str, rows_per_task: int, seed: int) -> dict[str, np.ndarray]:
    """Per task name, the rows of ``split`` to rank: all, or a seeded subset of ``rows_per_task``."""
    out = {}
    for spec in TASKS:
        rows = sample_rows(
            dataset.rows(split, int(spec.task_type)), rows_per_task, seed + int(spec.task_type)
        )
        if len(rows):
            out[spec.name] = rows
    return out


def evaluate_scorers(
    scorers: Mapping[str, Scorer],
    dataset: Dataset,
    split: str,
    catalog: Catalog,
    rows_per_task: int,
    seed: int,
    k: int = metrics.K_DEFAULT,
    tasks: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """{task name: {scorer name: metrics}} on each task's own rows of ``split``.

    ``tasks`` fixes the rows per task (e.g. the same rows for every model of a comparison).
    """
    candidates = CandidateSets(catalog)
    rows_by_task = tasks if tasks is not None else evaluation_rows(dataset, split, rows_per_task, seed)
    out: dict[str, dict[str, dict[str, float]]] = {}
    with progress_bar(len(rows_by_task) * len(scorers), f"evaluate ({split})", unit="ranking") as bar:
        for task, rows in rows_by_task.items():
            out[task] = {}
            for name, scorer in scorers.items():
                out[task][name] = rank_rows(scorer, dataset, rows, candidates, k).metrics(catalog.n_items, k)
                bar.update(1)
    return out


def score_reference(
    scorer: ModelScorer,
    dataset: Dataset,
    catalog: Catalog,
    rows_per_task: int,
    seed: int,
    bins: int = REFERENCE_BINS,
) -> dict[str, dict[str, list[float]]]:
    """Per task, a quantile histogram of the model's top score on validation rows (for drift / PSI).

    ``edges`` are the ``bins + 1`` quantiles, so each bin holds about 1/bins of the reference
    rows; serving compares live top scores binned on the same edges.
    """
    out: dict[str, dict[str, list[float]]] = {}
    candidates = CandidateSets(catalog)
    for spec in TASKS:
        rows = sample_rows(dataset.rows("validation", int(spec.task_type)), rows_per_task, seed)
        if not len(rows):
            continue
        best = rank_rows(scorer, dataset, rows, candidates).best
        if not np.isfinite(best).any():
            continue
        edges, fractions = quantile_histogram(best, bins)
        out[spec.name] = {"edges": edges, "fractions": fractions}
    return out


def offline_metrics(
    model: UniRankModel,
    catalog: Catalog,
    co_engagement: CoEngagement,
    dataset: Dataset,
    rows_per_task: int,
    validation_rows_per_task: int,
    seed: int,
    tasks: Collection[str] | None = None,
) -> dict[str, Any]:
    """The content of ``metrics.json``: test metrics of model and baselines, and score references.

    ``tasks`` names the use-cases the model was trained on (None: all); the others are not measured.
    """
    model_scorer = ModelScorer(model)
    scorers: dict[str, Scorer] = {
        MODEL: model_scorer,
        POPULARITY: PopularityScorer(catalog),
        POPULARITY_TASK_AWARE: TaskAwarePopularityScorer(catalog, co_engagement),
    }
    names = {spec.name for spec in TASKS} if tasks is None else set(tasks)
    rows_by_task = {
        task: rows
        for task, rows in evaluation_rows(dataset, "test", rows_per_task, seed).items()
        if task in names
    }
    by_task = evaluate_scorers(scorers, dataset, "test", catalog, rows_per_task, seed, tasks=rows_by_task)
    rows = {
        spec.name: int(min(len(dataset.rows("test", int(spec.task_type))), rows_per_task))
        for spec in TASKS
        if spec.name in names
    }
    reference = score_reference(model_scorer, dataset, catalog, validation_rows_per_task, seed)
    return {
        "tasks": by_task,
        "score_reference": {task: ref for task, ref in reference.items() if task in names},
        "evaluation": {
            "split": "test",
            "k": metrics.K_DEFAULT,
            "rows": rows,
            "ranking": "full ranking over each task's candidate set (category: the category's items; "
            "new_releases: the items new at the row's time; others: the catalogue); excluded: the "
            "anchor, and for notification, category, new_releases and engagement-derived related "
            "rows everything the user played before",
        },
    }


def format_table(task_metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A plain-text table: one line per task and metric, model next to the baselines."""
    header = f"{'task':<14} {'metric':<12} {'model':>8} {'popularity':>11} {'task-aware':>11} {'lift':>7}"
    lines = [header, "-" * len(header)]
    # Registry order for tasks, a fixed order for metrics: metrics.json is stored with sorted keys.
    tasks = [spec.name for spec in TASKS if spec.name in task_metrics]
    tasks += sorted(set(task_metrics) - set(tasks))
    for task in tasks:
        by_scorer = task_metrics[task]
        model_metrics = by_scorer.get(MODEL, {})
        names = [m for m in METRIC_ORDER if m in model_metrics] + sorted(
            set(model_metrics) - set(METRIC_ORDER)
        )
        for metric in names:
            value = model_metrics[metric]
            pop = by_scorer.get(POPULARITY, {}).get(metric, float("nan"))
            aware = by_scorer.get(POPULARITY_TASK_AWARE, {}).get(metric, float("nan"))
            best_baseline = max(pop, aware)
            lift = f"{value / best_baseline:6.2f}x" if best_baseline > 0 else "    n/a"
            lines.append(f"{task:<14} {metric:<12} {value:8.4f} {pop:11.4f} {aware:11.4f} {lift:>7}")
    return "\n".join(lines)
