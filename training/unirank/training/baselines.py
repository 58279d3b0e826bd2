"""Popularity baselines and the co-engagement counts they (and related-item retrieval) use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unirank.artifact import Catalog, TaskType
from unirank.training.logs import EventType, LogData
from unirank.training.scoring import Batch


def popularity_order(popularity: np.ndarray) -> np.ndarray:
    """Item indices 1..n, most popular first; ties by lower index so the order is deterministic."""
    pop = np.asarray(popularity, dtype=np.float64)[1:]
    return np.lexsort((np.arange(len(pop)), -pop)) + 1


def popularity_score(popularity: np.ndarray) -> np.ndarray:
    """float64 [n_items] in (0, 1], strictly decreasing with popularity rank (column j = item j+1)."""
    order = popularity_order(popularity)
    n = len(order)
    score = np.empty(n, dtype=np.float64)
    score[order - 1] = 1.0 - np.arange(n) / (n + 1.0)
    return score


@dataclass
class CoEngagement:
    """Symmetric item-item co-engagement counts from training logs, as CSR over item indices.

    Two items are co-engaged when a related click joins them (anchor -> clicked) or when one
    user played them within ``window`` plays of each other (the co-occurrence neighbours of
    session-based recommenders). Each row lists neighbours by count, then popularity.
    """

    indptr: np.ndarray
    neighbours: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_logs(
        cls, log: LogData, usable: np.ndarray, popularity: np.ndarray, window: int = 3
    ) -> CoEngagement:
        """Counts from the events where ``usable`` (bool per event, e.g. the training split) is true.

        Item indices are catalogue indices (log row + 1).
        """
        events = log.events
        past = np.asarray(usable, dtype=bool)
        n = log.n_items + 1
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        related = past & (events.event_type == EventType.RELATED_CLICK)
        pairs.append((events.anchor_item[related] + 1, events.item[related] + 1))
        plays = past & (events.event_type == EventType.PLAY)
        user, time, item = events.user[plays], events.timestamp_ms[plays], events.item[plays] + 1
        order = np.lexsort((time, user))
        user, item = user[order], item[order]
        for gap in range(1, window + 1):
            same_user = user[gap:] == user[:-gap]
            pairs.append((item[:-gap][same_user], item[gap:][same_user]))
        left = np.concatenate([a for a, _ in pairs] + [b for _, b in pairs])
        right = np.concatenate([b for _, b in pairs] + [a for a, _ in pairs])
        distinct = left != right
        codes, counts = np.unique(left[distinct] * n + right[distinct], return_counts=True)
        row, col = codes // n, codes % n
        pop_rank = np.empty(n, dtype=np.int64)
        pop_rank[0] = n
        pop_rank[popularity_order(popularity)] = np.arange(n - 1)
        order = np.lexsort((pop_rank[col], -counts, row))
        row, col, counts = row[order], col[order], counts[order]
        indptr = np.searchsorted(row, np.arange(n + 1), side="left").astype(np.int64)
        return cls(indptr=indptr, neighbours=col.astype(np.int64), counts=counts.astype(np.int64))

    def row(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """(neighbours, counts) of one item index, best first."""
        lo, hi = self.indptr[item], self.indptr[item + 1]
        return self.neighbours[lo:hi], self.counts[lo:hi]

    def dense(self, items: np.ndarray, n_items: int) -> np.ndarray:
        """float64 [len(items), n_items] counts (column j = item j+1)."""
        out = np.zeros((len(items), n_items), dtype=np.float64)
        for r, item in enumerate(items.tolist()):
            if 0 < item < len(self.indptr) - 1:
                cols, counts = self.row(item)
                out[r, cols - 1] = counts
        return out


class PopularityScorer:
    """Global popularity, the same list for every context."""

    def __init__(self, catalog: Catalog) -> None:
        self.score = popularity_score(np.asarray(catalog.popularity))

    def __call__(self, batch: Batch) -> np.ndarray:
        return np.broadcast_to(self.score, (len(batch), len(self.score))).copy()


class TaskAwarePopularityScorer:
    """The strongest simple rule per task; popularity breaks ties and ranks the rest.

    notification: global popularity (unseen items are enforced by the evaluation's exclusions);
    related items: co-engagement count with the anchor (plain popularity when ``co_engagement`` is
    None: the popularity baseline of the comparison); search: number of query tokens the title
    contains; category: membership of the category.
    """

    def __init__(self, catalog: Catalog, co_engagement: CoEngagement | None) -> None:
        self.popularity = popularity_score(np.asarray(catalog.popularity))
        self.co_engagement = co_engagement
        n_items = catalog.n_items
        titles = catalog.title_token_matrix()[1:]
        self.title_tokens = np.zeros((n_items, len(catalog.tokens)), dtype=np.float32)
        rows = np.repeat(np.arange(n_items), titles.shape[1])
        self.title_tokens[rows, titles.ravel()] = 1.0
        self.title_tokens[:, 0] = 0.0
        cats = catalog.category_matrix()[1:]
        self.item_categories = np.zeros((n_items, len(catalog.categories)), dtype=np.float32)
        self.item_categories[np.repeat(np.arange(n_items), cats.shape[1]), cats.ravel()] = 1.0
        self.item_categories[:, 0] = 0.0

    def __call__(self, batch: Batch) -> np.ndarray:
        inputs = batch.inputs
        n_rows, n_items = len(inputs), len(self.popularity)
        primary = np.zeros((n_rows, n_items), dtype=np.float64)
        related = np.flatnonzero(inputs.task == TaskType.RELATED_ITEMS)
        if len(related) and self.co_engagement is not None:
            primary[related] = self.co_engagement.dense(inputs.anchor_item[related], n_items)
        search = np.flatnonzero(inputs.task == TaskType.SEARCH)
        if len(search):
            query = np.zeros((len(search), self.title_tokens.shape[1]), dtype=np.float32)
            rows = np.repeat(np.arange(len(search)), inputs.query_tokens.shape[1])
            query[rows, inputs.query_tokens[search].ravel()] = 1.0  # distinct tokens
            query[:, 0] = 0.0
            primary[search] = query @ self.title_tokens.T
        category = np.flatnonzero(inputs.task == TaskType.CATEGORY)
        if len(category):
            primary[category] = self.item_categories[:, inputs.category[category]].T
        # Popularity is < 1 and counts are integers, so this orders by count, then popularity.
        return primary + 0.5 * self.popularity
