"""Ranking metrics from full-catalogue score matrices, vectorised over rows."""

from __future__ import annotations

import numpy as np

K_DEFAULT = 10


def positive_ranks(scores: np.ndarray, positive_col: np.ndarray) -> np.ndarray:
    """0-based rank of each row's positive column among the row's scores.

    Ties are split evenly (the expected rank under random tie-breaking, rounded down), so a
    scorer that gives many items one score gains nothing from where the positive happens to sit.
    Excluded items should carry ``-inf``; a positive at ``-inf`` ranks after everything.
    """
    rows = np.arange(scores.shape[0])
    pos = scores[rows, positive_col][:, None]
    greater = (scores > pos).sum(axis=1)
    ties = (scores == pos).sum(axis=1) - 1
    ranks = greater + ties // 2
    unreachable = ~np.isfinite(pos[:, 0]) & (pos[:, 0] < 0)
    return np.where(unreachable, scores.shape[1], ranks).astype(np.int64)


def recall_at_k(ranks: np.ndarray, k: int = K_DEFAULT) -> float:
    """Share of rows whose single positive is in the top k (= hit rate with one positive)."""
    return float((ranks < k).mean()) if len(ranks) else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int = K_DEFAULT) -> float:
    """Mean NDCG@k with one relevant item per row: 1 / log2(rank + 2) inside the top k."""
    if not len(ranks):
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks.astype(np.float64) + 2.0), 0.0)
    return float(gains.mean())


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the full ranking."""
    return float((1.0 / (ranks.astype(np.float64) + 1.0)).mean()) if len(ranks) else 0.0


def coverage_at_k(top_items: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one row's top-k list."""
    if n_items <= 0:
        return 0.0
    return float(len(np.unique(top_items)) / n_items)


def top_k(scores: np.ndarray, k: int = K_DEFAULT) -> np.ndarray:
    """Column indices of each row's k best scores (unordered within the k)."""
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def summarise(ranks: np.ndarray, top_items: np.ndarray, n_items: int, k: int = K_DEFAULT) -> dict[str, float]:
    """The metrics table of one task and one scorer."""
    return {
        f"recall@{k}": recall_at_k(ranks, k),
        f"ndcg@{k}": ndcg_at_k(ranks, k),
        "mrr": mrr(ranks),
        f"coverage@{k}": coverage_at_k(top_items, n_items),
    }
