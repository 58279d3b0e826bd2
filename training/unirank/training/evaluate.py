"""Per-task offline evaluation: full-catalogue ranking of each task's rows, model vs baselines."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from unirank.artifact import TASKS, Catalog, ModelInputs
from unirank.model.net import UniRankModel
from unirank.training import metrics
from unirank.training.baselines import CoEngagement, PopularityScorer, TaskAwarePopularityScorer
from unirank.training.dataset import Dataset

Scorer = Callable[[ModelInputs], np.ndarray]
"""Model inputs of B rows (candidates ignored) -> scores [B, n_items]; column j is item index j+1."""

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


class ModelScorer:
    """Scores every catalogue item with the model, item vectors computed once."""

    def __init__(self, model: UniRankModel) -> None:
        self.model = model.eval()
        with torch.no_grad():
            self.item_table = model.item_table()

    def __call__(self, inputs: ModelInputs) -> np.ndarray:
        with torch.no_grad():
            scores = self.model.score_all_items(
                torch.from_numpy(inputs.task),
                torch.from_numpy(inputs.user),
                torch.from_numpy(np.ascontiguousarray(trim_padding(inputs.history))),
                torch.from_numpy(np.ascontiguousarray(trim_padding(inputs.query_tokens))),
                torch.from_numpy(inputs.anchor_item),
                torch.from_numpy(inputs.category),
                item_table=self.item_table,
            )
        return scores.numpy()


def sample_rows(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``rows``: a seeded subset, kept in their original order."""
    if len(rows) <= limit:
        return rows
    picked = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
    return rows[np.sort(picked)]


def _chunk_inputs(dataset: Dataset, rows: np.ndarray) -> ModelInputs:
    return ModelInputs(**{name: value[rows] for name, value in dataset.inputs.as_dict().items()})


def _apply_exclusions(scores: np.ndarray, dataset: Dataset, rows: np.ndarray) -> None:
    starts, ends = dataset.excluded_indptr[rows], dataset.excluded_indptr[rows + 1]
    lengths = ends - starts
    if not lengths.any():
        return
    local = np.repeat(np.arange(len(rows)), lengths)
    items = np.concatenate([dataset.excluded_items[s:e] for s, e in zip(starts, ends, strict=True)])
    scores[local, items - 1] = -np.inf


def rank_rows(
    scorer: Scorer, dataset: Dataset, rows: np.ndarray, k: int = metrics.K_DEFAULT, chunk: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive ranks [R], top-k item indices [R, k], best score [R]) over the full catalogue."""
    ranks, tops, best = [], [], []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        scores = np.asarray(scorer(_chunk_inputs(dataset, part)), dtype=np.float64)
        _apply_exclusions(scores, dataset, part)
        ranks.append(metrics.positive_ranks(scores, dataset.positive[part] - 1))
        tops.append(metrics.top_k(scores, k) + 1)
        best.append(scores.max(axis=1))
    if not ranks:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros((0, k), dtype=np.int64), np.zeros(0)
    return np.concatenate(ranks), np.concatenate(tops), np.concatenate(best)


def evaluate_scorers(
    scorers: Mapping[str, Scorer],
    dataset: Dataset,
    split: str,
    n_items: int,
    rows_per_task: int,
    seed: int,
    k: int = metrics.K_DEFAULT,
) -> dict[str, dict[str, dict[str, float]]]:
    """{task name: {scorer name: metrics}} on each task's own rows of ``split``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for spec in TASKS:
        rows = sample_rows(
            dataset.rows(split, int(spec.task_type)), rows_per_task, seed + int(spec.task_type)
        )
        if not len(rows):
            continue
        out[spec.name] = {}
        for name, scorer in scorers.items():
            ranks, tops, _ = rank_rows(scorer, dataset, rows, k)
            out[spec.name][name] = metrics.summarise(ranks, tops, n_items, k)
    return out


def score_reference(
    scorer: ModelScorer, dataset: Dataset, rows_per_task: int, seed: int, bins: int = 10
) -> dict[str, dict[str, list[float]]]:
    """Per task, a quantile histogram of the model's top score on validation rows (for drift / PSI).

    ``edges`` are the ``bins + 1`` quantiles, so each bin holds about 1/bins of the reference
    rows; serving compares live top scores binned on the same edges.
    """
    out: dict[str, dict[str, list[float]]] = {}
    for spec in TASKS:
        rows = sample_rows(dataset.rows("validation", int(spec.task_type)), rows_per_task, seed)
        if not len(rows):
            continue
        _, _, best = rank_rows(scorer, dataset, rows)
        best = best[np.isfinite(best)]
        if not len(best):
            continue
        edges = np.quantile(best, np.linspace(0.0, 1.0, bins + 1))
        # Equal quantiles (a constant score) would make empty bins of zero width; keep edges increasing.
        edges = np.maximum.accumulate(edges + np.arange(bins + 1) * 1e-9)
        counts, _ = np.histogram(best, bins=edges)
        out[spec.name] = {
            "edges": [float(e) for e in edges],
            "fractions": [float(c) / len(best) for c in counts],
        }
    return out


def offline_metrics(
    model: UniRankModel,
    catalog: Catalog,
    co_engagement: CoEngagement,
    dataset: Dataset,
    rows_per_task: int,
    validation_rows_per_task: int,
    seed: int,
) -> dict[str, Any]:
    """The content of ``metrics.json``: test metrics of model and baselines, and score references."""
    model_scorer = ModelScorer(model)
    scorers: dict[str, Scorer] = {
        MODEL: model_scorer,
        POPULARITY: PopularityScorer(catalog),
        POPULARITY_TASK_AWARE: TaskAwarePopularityScorer(catalog, co_engagement),
    }
    tasks = evaluate_scorers(scorers, dataset, "test", catalog.n_items, rows_per_task, seed)
    rows = {
        spec.name: int(min(len(dataset.rows("test", int(spec.task_type))), rows_per_task)) for spec in TASKS
    }
    return {
        "tasks": tasks,
        "score_reference": score_reference(model_scorer, dataset, validation_rows_per_task, seed),
        "evaluation": {
            "split": "test",
            "k": metrics.K_DEFAULT,
            "rows": rows,
            "ranking": "full catalogue; notification excludes the user's played items, "
            "related items excludes the anchor",
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
