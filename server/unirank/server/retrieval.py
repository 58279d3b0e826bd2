"""Candidate retrieval: ordered sources with quotas, deduplicated and capped."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from unirank.artifact import Artifact, EncodedContext
from unirank.server.config import RetrievalConfig
from unirank.server.domain import Source
from unirank.server.rules import Candidates

_SOURCES: dict[str, Source] = {
    "caller": Source.CALLER,
    "history": Source.HISTORY,
    "related": Source.RELATED,
    "lexical": Source.LEXICAL,
    "embedding": Source.EMBEDDING,
    "category": Source.CATEGORY,
    "popular": Source.POPULAR,
}
_EMPTY = np.zeros(0, dtype=np.int64)
# How many recent history items seed history-based retrieval.
_HISTORY_SEEDS = 5


class Retriever:
    """Retrieval over one artifact's indexes (item indices in, item indices out)."""

    def __init__(self, artifact: Artifact) -> None:
        self._data = artifact.retrieval
        self._n_items = len(artifact.catalog.items)
        self._embeddings = np.ascontiguousarray(self._data.item_embeddings, dtype=np.float32)
        self._fns: dict[str, Callable[[EncodedContext, int], np.ndarray]] = {
            "history": self._history,
            "related": self._related,
            "lexical": self._lexical,
            "embedding": self._embedding,
            "category": self._category,
            "popular": self._popular,
        }

    def retrieve(self, encoded: EncodedContext, config: RetrievalConfig) -> Candidates:
        """Run the configured sources in order; earlier sources win duplicates."""
        seen = np.zeros(self._n_items, dtype=bool)
        seen[0] = True  # padding is never a candidate
        items: list[np.ndarray] = []
        sources: list[np.ndarray] = []
        remaining = config.max_candidates
        for source in config.sources:
            if remaining <= 0:
                break
            fn = self._fns.get(source.source)
            if fn is None:  # "caller" is handled by the pipeline before retrieval
                continue
            found = fn(encoded, source.quota)
            if not len(found):
                continue
            fresh = found[~seen[found]]
            fresh = _unique_in_order(fresh)[: min(source.quota, remaining)]
            seen[fresh] = True
            items.append(fresh)
            sources.append(np.full(len(fresh), _SOURCES[source.source], dtype=np.int8))
            remaining -= len(fresh)
        if not items:
            return Candidates(_EMPTY, np.zeros(0, dtype=np.int8))
        return Candidates(np.concatenate(items), np.concatenate(sources))

    def caller_candidates(self, item_indices: np.ndarray, cap: int) -> Candidates:
        """Caller-supplied candidates (known ones, deduplicated, in the caller's order)."""
        known = _unique_in_order(item_indices[item_indices > 0])[:cap]
        return Candidates(known, np.full(len(known), Source.CALLER, dtype=np.int8))

    def _history(self, enc: EncodedContext, quota: int) -> np.ndarray:
        seeds = enc.history[enc.history > 0][-_HISTORY_SEEDS:][::-1]
        if not len(seeds):
            return _EMPTY
        neighbours = self._data.related_items[seeds]  # [S, K], most recent seed first
        # Interleave by rank so every recent item contributes its best neighbours first.
        flat = neighbours.T.reshape(-1)
        return flat[flat > 0][: quota * 2]

    def _related(self, enc: EncodedContext, quota: int) -> np.ndarray:
        if enc.anchor_item <= 0:
            return _EMPTY
        row = self._data.related_items[enc.anchor_item]
        return row[row > 0]

    def _lexical(self, enc: EncodedContext, quota: int) -> np.ndarray:
        tokens = np.unique(enc.query_tokens[enc.query_tokens > 0])
        if not len(tokens):
            return _EMPTY
        lists = [self._data.lexical(int(t)) for t in tokens]
        if len(lists) == 1:
            return lists[0]
        # Items matching more query tokens first, then by popularity rank within their list.
        flat = np.concatenate(lists)
        ranks = np.concatenate([np.arange(len(x)) for x in lists])
        unique, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        best_rank = np.full(len(unique), np.iinfo(np.int64).max)
        np.minimum.at(best_rank, inverse, ranks)
        order = np.lexsort((best_rank, -counts))
        return unique[order]

    def _embedding(self, enc: EncodedContext, quota: int) -> np.ndarray:
        if enc.anchor_item > 0:
            query = self._embeddings[enc.anchor_item]
        else:
            hist = enc.history[enc.history > 0]
            if not len(hist):
                return _EMPTY
            query = self._embeddings[hist].mean(axis=0)
        sims = self._embeddings @ query
        sims[0] = -np.inf
        k = min(quota * 2, len(sims) - 1)
        top = np.argpartition(-sims, k)[:k]
        return top[np.argsort(-sims[top])]

    def _category(self, enc: EncodedContext, quota: int) -> np.ndarray:
        return self._data.category(enc.category)

    def _popular(self, enc: EncodedContext, quota: int) -> np.ndarray:
        return self._data.popular_items[: quota * 2]

    def popular(self, n: int, category: int = 0) -> np.ndarray:
        """The fallback list: popular in ``category`` when given and known, else popular overall."""
        if category > 0:
            items = self._data.category(category)
            if len(items):
                return items[:n]
        return self._data.popular_items[:n]


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    if len(values) < 2:
        return values
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]
