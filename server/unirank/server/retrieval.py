"""Candidate retrieval: ordered sources with quotas, deduplicated and capped."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from unirank.artifact import Artifact, ArtifactError, EncodedContext
from unirank.artifact.ann import ITEM_INDEX, ItemIndex
from unirank.artifact.catalog import NEW_RELEASE_YEARS, new_release_years
from unirank.server.config import RetrievalConfig
from unirank.server.domain import Candidates, Source, in_sorted

_SOURCES: dict[str, Source] = {
    "caller": Source.CALLER,
    "history": Source.HISTORY,
    "related": Source.RELATED,
    "lexical": Source.LEXICAL,
    "embedding": Source.EMBEDDING,
    "category": Source.CATEGORY,
    "popular": Source.POPULAR,
    "new_releases": Source.NEW_RELEASES,
}
_EMPTY = np.zeros(0, dtype=np.int64)
# How many recent history items seed history-based retrieval.
_HISTORY_SEEDS = 5
# Distinct release windows whose item lists are kept (requests name few: one per year and width).
_MAX_CACHED_WINDOWS = 64


@dataclass(frozen=True)
class ReleaseWindow:
    """The release years, both inclusive, that count as new for one request."""

    first: int
    last: int


class Retriever:
    """Retrieval over one artifact's indexes (item indices in, item indices out)."""

    def __init__(self, artifact: Artifact) -> None:
        self._data = artifact.retrieval
        self._embeddings = np.ascontiguousarray(self._data.item_embeddings, dtype=np.float32)
        self._index_path = artifact.item_index_path
        catalog = artifact.catalog
        self._newest_year = catalog.newest_release_year
        # int32, as the artifact's item lists: 8 MB less than int64 at a million items.
        by_popularity = 1 + np.argsort(-np.asarray(catalog.popularity[1:]), kind="stable")
        self._by_popularity = by_popularity.astype(np.int32)
        self._years_by_popularity = np.asarray(catalog.release_year, dtype=np.int32)[by_popularity]
        self._new_releases: dict[ReleaseWindow, np.ndarray] = {}
        self._fns: dict[str, Callable[[EncodedContext, int], np.ndarray]] = {
            "history": self._history,
            "related": self._related,
            "lexical": self._lexical,
            "embedding": self._embedding,
            "category": self._category,
            "popular": self._popular,
        }

    def release_window(self, event_time_ms: int, window_years: int) -> ReleaseWindow:
        """New releases at ``event_time_ms`` (0: now), ``window_years`` wide (0: the default)."""
        first, last = new_release_years(
            event_time_ms or int(time.time() * 1000), self._newest_year, window_years or NEW_RELEASE_YEARS
        )
        return ReleaseWindow(int(first), int(last))

    def new_releases(self, window: ReleaseWindow) -> np.ndarray:
        """Items released within ``window``, most popular first."""
        found = self._new_releases.get(window)
        if found is None:
            years = self._years_by_popularity
            found = self._by_popularity[(years > 0) & (years >= window.first) & (years <= window.last)]
            if len(self._new_releases) >= _MAX_CACHED_WINDOWS:
                self._new_releases.clear()
            self._new_releases[window] = found
        return found

    def retrieve(
        self, encoded: EncodedContext, config: RetrievalConfig, window: ReleaseWindow | None = None
    ) -> Candidates:
        """Run the configured sources in order; earlier sources win duplicates.

        ``window`` is the request's new-release window (the ``new_releases`` source; default: now).
        """
        taken = _EMPTY  # every item taken so far, sorted: work per request grows with candidates only
        items: list[np.ndarray] = []
        sources: list[int] = []
        remaining = config.max_candidates
        for source in config.sources:
            if remaining <= 0:
                break
            if source.source == "new_releases":  # the only source that reads the request's time
                found = self.new_releases(window or self.release_window(0, 0))
            elif source.source == "embedding" and config.embedding_search == "approximate":
                found = self._nearest(encoded, source.quota, config.ann_ef_search)
            elif (fn := self._fns.get(source.source)) is not None:
                found = fn(encoded, source.quota)
            else:  # "caller" is handled by the pipeline before retrieval
                continue
            fresh = _fresh(found, taken, min(source.quota, remaining))
            if not len(fresh):
                continue
            items.append(fresh)
            sources.append(_SOURCES[source.source])
            remaining -= len(fresh)
            if remaining > 0:  # another source may follow
                taken = np.sort(np.concatenate([taken, fresh]))
        if not items:
            return Candidates(_EMPTY, np.zeros(0, dtype=np.int8))
        counts = [len(x) for x in items]
        return Candidates(np.concatenate(items), np.repeat(np.array(sources, dtype=np.int8), counts))

    @functools.cached_property
    def item_index(self) -> ItemIndex | None:
        """The artifact's approximate nearest-neighbour index (None: it ships none), read on first
        use: a profile that searches exactly never pays for it."""
        return ItemIndex.load(self._index_path) if self._index_path is not None else None

    def stored_history(self, user_index: int) -> np.ndarray:
        """The user's history shipped in the artifact (training plays, oldest first), for a
        request that sends none; empty for an unknown user or an artifact without histories."""
        return self._data.user_history(user_index)

    def caller_candidates(self, known: list[int], cap: int) -> Candidates:
        """Caller-supplied candidates: the indices of the known ones, deduplicated in the caller's
        order and capped."""
        items = np.array(list(dict.fromkeys(known))[:cap], dtype=np.int64)
        sources = np.empty(len(items), dtype=np.int8)
        sources.fill(Source.CALLER)
        return Candidates(items, sources)

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
        """Items whose titles hold the query's words: those holding more of them first, then by
        their best place (popularity rank) in a word's list; the first ``2 * quota`` of that order
        when the query has several words."""
        tokens = np.unique(enc.query_tokens[enc.query_tokens > 0])
        lists = [found for t in tokens if len(found := self._data.lexical(int(t)))]
        if len(lists) < 2:
            return lists[0] if lists else _EMPTY
        if self._popularity_rank is None:
            return _merged_lexical(lists)
        return _top_lexical(lists, self._popularity_rank, self._data.popular_items, quota * 2)

    @functools.cached_property
    def _popularity_rank(self) -> np.ndarray | None:
        """Each item's place in ``popular_items`` (int32), when every word's list is in that order
        (as training writes them), which lets a query's lists be matched by binary search; else None."""
        popular = self._data.popular_items
        rank = np.full(len(self._embeddings), len(popular), dtype=np.int32)
        rank[popular] = np.arange(len(popular), dtype=np.int32)
        ranks = rank[self._data.lexical_items]
        starts = np.zeros(len(ranks), dtype=bool)
        starts[self._data.lexical_indptr[:-1][self._data.lexical_indptr[:-1] < len(ranks)]] = True
        ordered = bool(((np.diff(ranks) > 0) | starts[1:]).all()) if len(ranks) else True
        return rank if ordered else None

    def _embedding(self, enc: EncodedContext, quota: int) -> np.ndarray:
        query = self._embedding_query(enc)
        if query is None:
            return _EMPTY
        sims = self._embeddings @ query
        sims[0] = -np.inf
        k = min(quota * 2, len(sims) - 1)
        top = np.argpartition(-sims, k)[:k]
        return top[np.argsort(-sims[top])]

    def _nearest(self, enc: EncodedContext, quota: int, ef_search: int) -> np.ndarray:
        """The ``embedding`` source through the artifact's HNSW index: no catalogue-sized work."""
        query = self._embedding_query(enc)
        if query is None or self.item_index is None:
            return _EMPTY
        return self.item_index.search(query, quota * 2, ef_search)

    def _embedding_query(self, enc: EncodedContext) -> np.ndarray | None:
        """The anchor's embedding, else the mean of the history's (None: neither is known)."""
        if enc.anchor_item > 0:
            return self._embeddings[enc.anchor_item]
        hist = enc.history[enc.history > 0]
        return self._embeddings[hist].mean(axis=0) if len(hist) else None

    def _category(self, enc: EncodedContext, quota: int) -> np.ndarray:
        return self._data.category(enc.category)

    def _popular(self, enc: EncodedContext, quota: int) -> np.ndarray:
        return self._data.popular_items[: quota * 2]

    def popular(self, n: int, category: int = 0, window: ReleaseWindow | None = None) -> np.ndarray:
        """The fallback list: the most popular new releases of ``window`` when given, else popular
        in ``category`` when given and known, else popular overall."""
        if window is not None:
            return self.new_releases(window)[:n]
        if category > 0:
            items = self._data.category(category)
            if len(items):
                return items[:n]
        return self._data.popular_items[:n]


def check_item_index(configs: Iterable[RetrievalConfig], retriever: Retriever, version: str) -> None:
    """Refuse a version that cannot serve the profile's approximate embedding retrieval; where the
    profile uses it, the index is read here, while the version loads, not by its first request."""
    wanted = any(
        config.embedding_search == "approximate" and any(s.source == "embedding" for s in config.sources)
        for config in configs
    )
    if wanted and retriever.item_index is None:
        raise ArtifactError(
            f"the profile asks for approximate embedding retrieval, but version {version} ships no "
            f'{ITEM_INDEX} (an older artifact): retrain it, or set embedding_search = "exact"'
        )


def _merged_lexical(lists: list[np.ndarray]) -> np.ndarray:
    """Every item of the words' ``lists``: those in more lists first, then by their best place in
    one, then by item index: work in the lists' whole length (:func:`_top_lexical` does less)."""
    flat = np.concatenate(lists)
    ranks = np.concatenate([np.arange(len(x)) for x in lists])
    unique, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    best_rank = np.full(len(unique), np.iinfo(np.int64).max)
    np.minimum.at(best_rank, inverse, ranks)
    return unique[np.lexsort((best_rank, -counts))]


def _top_lexical(lists: list[np.ndarray], rank: np.ndarray, by_rank: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of :func:`_merged_lexical`'s order, the same items, from two or more lists in
    popularity order (``rank`` each item's place, ``by_rank`` the items by place). Work in the
    lists but the longest, not in the catalogue: an item in two or more lists is in one of the
    shorter ones, where its lists are found by binary search; an item in one list is among the
    best ``n`` of those only if fewer than ``n`` items of its list come before it."""
    ranks = [rank[items] for items in lists]  # each ascending
    longest = max(range(len(ranks)), key=lambda i: len(ranks[i]))
    shorter = [r for i, r in enumerate(ranks) if i != longest]
    pool = shorter[0] if len(shorter) == 1 else np.unique(np.concatenate(shorter))
    counts, best = _list_matches(pool, ranks)
    several = counts >= 2
    if several.sum() < n:
        # Every item before a single-list one in its list ranks before it: only the first n can count.
        pool = np.union1d(pool[several], np.concatenate([r[:n] for r in ranks]))
        counts, best = _list_matches(pool, ranks)
    else:
        pool, counts, best = pool[several], counts[several], best[several]
    items = by_rank[pool].astype(np.int64)
    return items[np.lexsort((items, best, -counts))[:n]]


def _list_matches(pool: np.ndarray, ranks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For ascending popularity places ``pool``: in how many of the ascending ``ranks`` each is,
    and its best place in one of them."""
    counts = np.zeros(len(pool), dtype=np.int64)
    best = np.full(len(pool), np.iinfo(np.int64).max)
    for r in ranks:
        at = np.searchsorted(r, pool)
        found = r[np.minimum(at, len(r) - 1)] == pool
        counts += found
        best = np.where(found, np.minimum(best, at), best)
    return counts, best


def _fresh(found: np.ndarray, taken: np.ndarray, need: int) -> np.ndarray:
    """Up to ``need`` items of ``found``, in its order, without repeats or ``taken`` ones (sorted;
    padding 0 is never a candidate). Reads a prefix of ``found`` only, doubled until it yields
    ``need``, so a long list (a whole category of a large catalogue) costs what the request takes."""
    prefix = need + len(taken)
    while True:
        head = found[:prefix]
        head = head[(head > 0) & ~in_sorted(head, taken)]
        fresh = _unique_in_order(head)
        if len(fresh) >= need or prefix >= len(found):
            return fresh[:need]
        prefix *= 2


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    """``values`` without later repeats (a stable sort puts each value's first place first)."""
    if len(values) < 2:
        return values
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    repeat = ordered[1:] == ordered[:-1]
    if not repeat.any():  # the common case: already unique
        return values
    keep = np.ones(len(values), dtype=bool)
    keep[order[1:][repeat]] = False
    return values[keep]
