"""Head calibration after training: per task, raise the head's weight on the classic peers' signals
(popularity, co-engagement) where the task's validation NDCG says so."""

from __future__ import annotations

import numpy as np
import torch

from unirank.artifact import Catalog, metrics
from unirank.model.config import N_CROSS_FEATURES
from unirank.model.net import TaskHead, UniRankModel
from unirank.training import evaluate
from unirank.training.dataset import Dataset
from unirank.training.evaluate import CandidateSets, ModelScorer, TimeCache, all_items_time
from unirank.training.scoring import Batch

CALIBRATED_FEATURES: tuple[tuple[str, int, tuple[float, ...]], ...] = (
    ("popularity", 2, (1.0, 2.0, 4.0, 8.0)),
    ("co_history", 7, (1.0, 2.0)),
    ("co_anchor", 5, (1.0, 2.0)),
)
"""(name, index among the cross features, steps as multiples of the task's score spread): the
classic peers' signals (popularity, item-to-history and item-to-anchor co-engagement) whose weight
:func:`calibrate_heads` may raise per task."""
TIME_CALIBRATED_FEATURES: tuple[tuple[str, int, tuple[float, ...]], ...] = (
    ("recent_popularity", N_CROSS_FEATURES, (1.0, 2.0, 4.0)),
)
"""With time features, popularity now (the recent-popularity input) is calibrated too."""
MF_STEPS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
"""With the MF score (``mf_factors``), the steps its weight may be raised by: the score of ALS,
the peer that wins on sparse listening logs, whose weight only validation sets this way."""


def calibrated_features(model: UniRankModel) -> tuple[tuple[str, int, tuple[float, ...]], ...]:
    """The signals :func:`calibrate_heads` may raise for ``model``."""
    config = model.config
    mf = (("mf", config.mf_index, MF_STEPS),) if config.mf_factors else ()
    return CALIBRATED_FEATURES + (TIME_CALIBRATED_FEATURES if config.time_features else ()) + mf


def calibrate_heads(
    model: UniRankModel,
    dataset: Dataset,
    rows_by_task: dict[int, np.ndarray],
    catalog: Catalog,
    names: dict[int, str],
    time_cache: TimeCache | None = None,
) -> dict[str, dict[str, float]]:
    """Raise each task head's weight on the classic peers' signals where validation says so.

    The heads learn how much popularity and co-engagement count from sampled negatives and a few
    thousand rows; on a small or sparse task that weight can stay below what the plain signal
    earns (popularity among new items beat the new-releases head on MovieLens). Per task, one
    feature at a time, the bias of the head's weight for it is raised by a few multiples of the
    spread of the task's scores, and a step is kept only if it raises the task's validation
    NDCG@10. The result is still one model with the same graph: only head biases change, so
    serving computes exactly what was selected. A model without task heads (the no-task-type
    ablation) is left as it is. ``time_cache``: the training run's (the same validation rows).
    """
    if len(model.heads) < 2:
        return {}
    out: dict[str, dict[str, float]] = {}
    candidates = CandidateSets(catalog)
    with torch.no_grad():
        for task, rows in rows_by_task.items():
            head = model.heads[task - 1]
            assert isinstance(head, TaskHead)
            spread = _score_spread(model, dataset, rows[:64])
            scorer = _BiasSteps(model, head, time_cache)
            best = _ndcg(scorer, dataset, rows, candidates)
            added: dict[str, float] = {}
            for feature, index, steps in calibrated_features(model):
                keep = 0.0
                for step in steps:
                    scorer.step = (index, step * spread)
                    value = _ndcg(scorer, dataset, rows, candidates)
                    if value > best:
                        best, keep = value, step * spread
                scorer.keep(index, keep)
                if keep:
                    added[feature] = keep
            out[names[task]] = added
    return out


def _ndcg(scorer: _BiasSteps, dataset: Dataset, rows: np.ndarray, candidates: CandidateSets) -> float:
    ranked = evaluate.rank_rows(scorer, dataset, rows, candidates)  # looked up late: tests spy on it
    return metrics.ndcg_at_k(ranked.ranks, indptr=ranked.indptr)


class _BiasSteps:
    """Scores with the head's cross bias at one feature raised by a step, without rescoring.

    A score is ``dot + sum_f cross_f * (W shared + bias)_f``: linear in each bias, so the score
    with ``bias[f] + step`` is the current score plus ``step * cross_f``. Per chunk of rows, the
    current scores and each calibrated feature's column (the score's change when its bias rises
    by one) are computed once; every step is then an addition instead of a pass of the model
    (the same selection, to float rounding, at about a third of the cost). ``keep`` moves the
    head's bias and the cached scores together.
    """

    def __init__(self, model: UniRankModel, head: TaskHead, time_cache: TimeCache | None = None) -> None:
        self.model, self.head = model, head
        self.scorer = ModelScorer(model, time_cache)  # item vectors do not depend on the heads
        self.base: dict[tuple[int, int], np.ndarray] = {}
        self.columns: dict[tuple[int, int, int], np.ndarray] = {}
        self.step: tuple[int, float] | None = None

    def __call__(self, batch: Batch) -> np.ndarray:
        key = (int(batch.rows[0]), len(batch.rows)) if len(batch.rows) else (-1, 0)
        if key not in self.base:
            self.base[key] = np.asarray(self.scorer(batch), dtype=np.float64)
        if self.step is None:
            return self.base[key]
        index, size = self.step
        return self.base[key] + size * self._column(key, index, batch)

    def _column(self, key: tuple[int, int], index: int, batch: Batch) -> np.ndarray:
        if (*key, index) not in self.columns:
            bias = self.head.cross.bias
            with torch.no_grad():
                start = float(bias[index])
                bias[index] = start + 1.0
                try:
                    raised = np.asarray(self.scorer(batch), dtype=np.float64)
                finally:
                    bias[index] = start
            self.columns[(*key, index)] = raised - self.base[key]
        return self.columns[(*key, index)]

    def keep(self, index: int, size: float) -> None:
        """Raise the head's bias at ``index`` by ``size`` for good (0: leave it)."""
        self.step = None
        if not size:
            return
        with torch.no_grad():
            self.head.cross.bias[index] += size
        for key in self.base:
            self.base[key] = self.base[key] + size * self.columns[(*key, index)]


def _score_spread(model: UniRankModel, dataset: Dataset, rows: np.ndarray) -> float:
    """Mean over rows of the standard deviation of the model's scores over the catalogue."""
    inputs = dataset.inputs
    with torch.no_grad():
        scores = model.score_all_items(
            torch.from_numpy(inputs.task[rows]),
            torch.from_numpy(inputs.user[rows]),
            torch.from_numpy(np.ascontiguousarray(inputs.history[rows])),
            torch.from_numpy(np.ascontiguousarray(inputs.query_tokens[rows])),
            torch.from_numpy(inputs.anchor_item[rows]),
            torch.from_numpy(inputs.category[rows]),
            item_time=all_items_time(model, dataset, rows),
        )
    return float(scores.std(dim=1).mean()) if len(rows) else 1.0
