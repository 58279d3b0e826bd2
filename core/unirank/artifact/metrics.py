"""Ranking metrics from score matrices, vectorised over rows; a row may have several positives.

One definition for training's offline evaluation and the server's offline gate (re-scoring on a
validation log), so both report the same NDCG.

Ranks are 0-based positions in the row's ranking. A row's positives are a CSR list: row r owns
``ranks[indptr[r]:indptr[r + 1]]``; ``indptr=None`` means one positive per row. With |P| positives:

* Recall@k = hits in the top k / min(k, |P|) (so a perfect ranking scores 1 whatever |P| is);
* NDCG@k = sum over hits of 1 / log2(rank + 2), divided by the same sum for a perfect ranking;
* MRR = 1 / (rank of the best-ranked positive + 1);
* coverage@k = share of the catalogue in at least one row's top k.

With one positive per row these are hit rate, the usual single-item NDCG and reciprocal rank.
"""

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


def positive_ranks_csr(scores: np.ndarray, indptr: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Ranks of every positive (CSR columns ``cols`` per row), tie-split like :func:`positive_ranks`.

    Other positives count as ranked above a positive they beat, as they would in the list shown.
    """
    _n_rows, n_cols = scores.shape
    lengths = np.diff(indptr)
    out = np.empty(len(cols), dtype=np.int64)
    single = np.flatnonzero(lengths == 1)
    if len(single):
        out[indptr[single]] = positive_ranks(scores[single], cols[indptr[single]])
    for r in np.flatnonzero(lengths > 1).tolist():
        row = scores[r]
        ordered = np.sort(row)
        values = row[cols[indptr[r] : indptr[r + 1]]]
        above = n_cols - np.searchsorted(ordered, values, side="right")
        ties = (
            np.searchsorted(ordered, values, side="right") - np.searchsorted(ordered, values, side="left") - 1
        )
        ranks = above + ties // 2
        out[indptr[r] : indptr[r + 1]] = np.where(np.isneginf(values), n_cols, ranks)
    return out


def _indptr(ranks: np.ndarray, indptr: np.ndarray | None) -> np.ndarray:
    return np.arange(len(ranks) + 1) if indptr is None else indptr


def _per_row_sum(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    sums = np.zeros(len(indptr) - 1)
    lengths = np.diff(indptr)
    if len(values):
        np.add.at(sums, np.repeat(np.arange(len(lengths)), lengths), values)
    return sums


def recall_at_k(ranks: np.ndarray, k: int = K_DEFAULT, indptr: np.ndarray | None = None) -> float:
    """Mean over rows of hits in the top k / min(k, |P|)."""
    indptr = _indptr(ranks, indptr)
    n_rows = len(indptr) - 1
    if not n_rows:
        return 0.0
    hits = _per_row_sum((ranks < k).astype(np.float64), indptr)
    return float((hits / np.maximum(np.minimum(np.diff(indptr), k), 1)).mean())


def _ideal_dcg(n_positives: np.ndarray, k: int) -> np.ndarray:
    discounts = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))
    return np.where(n_positives > 0, discounts[np.clip(np.minimum(n_positives, k) - 1, 0, k - 1)], 1.0)


def ndcg_at_k(ranks: np.ndarray, k: int = K_DEFAULT, indptr: np.ndarray | None = None) -> float:
    """Mean NDCG@k with binary relevance; one positive per row gives 1 / log2(rank + 2) in the top k."""
    indptr = _indptr(ranks, indptr)
    if len(indptr) < 2:
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks.astype(np.float64) + 2.0), 0.0)
    return float((_per_row_sum(gains, indptr) / _ideal_dcg(np.diff(indptr), k)).mean())


def mrr(ranks: np.ndarray, indptr: np.ndarray | None = None) -> float:
    """Mean reciprocal rank of each row's best-ranked positive, over the full ranking."""
    indptr = _indptr(ranks, indptr)
    lengths = np.diff(indptr)
    if not len(lengths):
        return 0.0
    best = np.full(len(lengths), np.iinfo(np.int64).max, dtype=np.int64)
    if len(ranks):
        np.minimum.at(best, np.repeat(np.arange(len(lengths)), lengths), ranks)
    return float(np.where(lengths > 0, 1.0 / (best.astype(np.float64) + 1.0), 0.0).mean())


def coverage_at_k(top_items: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one row's top-k list."""
    if n_items <= 0:
        return 0.0
    items = np.unique(top_items)
    return float(len(items[items > 0]) / n_items)


def top_k(scores: np.ndarray, k: int = K_DEFAULT) -> np.ndarray:
    """Column indices of each row's k best scores (unordered within the k)."""
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def summarise(
    ranks: np.ndarray,
    top_items: np.ndarray,
    n_items: int,
    k: int = K_DEFAULT,
    indptr: np.ndarray | None = None,
) -> dict[str, float]:
    """The metrics table of one task and one scorer."""
    return {
        f"recall@{k}": recall_at_k(ranks, k, indptr),
        f"ndcg@{k}": ndcg_at_k(ranks, k, indptr),
        "mrr": mrr(ranks, indptr),
        f"coverage@{k}": coverage_at_k(top_items, n_items),
    }
