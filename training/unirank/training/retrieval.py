"""Build the artifact's candidate-retrieval arrays from a trained model and training logs."""

from __future__ import annotations

import numpy as np
import torch

from unirank.artifact import Catalog
from unirank.artifact.ann import ItemIndex
from unirank.artifact.store import Retrieval
from unirank.model.net import UniRankModel
from unirank.training.baselines import CoEngagement, popularity_order
from unirank.training.examples import TRAIN, UserSplit
from unirank.training.logs import EventType, LogData
from unirank.training.progress import progress

RELATED_K = 50


def item_embeddings(model: UniRankModel) -> np.ndarray:
    """float32 [n_items + 1, d]: the model's item vectors, L2-normalised, row 0 zeros."""
    with torch.no_grad():
        table = model.eval().item_table().numpy().astype(np.float32)
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    table = np.where(norms > 0, table / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    table[0] = 0.0
    return table


EXACT_RELATED_MAX_ITEMS = 50_000
"""Up to this many items the related-items lists compare every pair (exact, seconds); beyond it
they search the artifact's HNSW item index, whose cost grows with n log n instead of n²."""
RELATED_EF_SEARCH = 128
"""The HNSW search list for the related-items lists (recall of the top 2k, measured in
docs/benchmarks.md; the server's own ``ann_ef_search`` is separate)."""


def _exact_neighbours(embeddings: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """[len(rows), width] nearest items of each row by inner product, nearest first (blocked:
    one chunk of rows against the whole catalogue, memory chunk x n)."""
    sims = embeddings[rows] @ embeddings.T
    sims[:, 0] = -np.inf
    sims[np.arange(len(rows)), rows] = -np.inf
    near = np.argpartition(-sims, width - 1, axis=1)[:, :width]
    near_sims = np.take_along_axis(sims, near, axis=1)
    return np.take_along_axis(near, np.argsort(-near_sims, axis=1, kind="stable"), axis=1)


def related_items(
    embeddings: np.ndarray,
    co_engagement: CoEngagement,
    k: int = RELATED_K,
    chunk: int = 1024,
    item_index: ItemIndex | None = None,
) -> np.ndarray:
    """int64 [n_items + 1, k]: co-engaged items first (by count), then nearest by embedding.

    Co-engagement is the evidence users gave; where it is thin (new or niche items) the
    embedding neighbours fill the remaining slots, so every item has a full list. The neighbours
    are exact up to :data:`EXACT_RELATED_MAX_ITEMS` items, or always when no ``item_index`` is
    given; otherwise the index's approximate ones (an item missing from a list is one the
    index did not reach, never a wrong one).
    """
    n = embeddings.shape[0]
    k = min(k, n - 2) if n > 2 else 0
    out = np.zeros((n, max(k, 0)), dtype=np.int64)
    if k <= 0:
        return out
    # Up to 2k nearest, enough to fill k slots after dropping co-engaged duplicates.
    width = min(2 * k, n - 2)
    approximate = item_index is not None and n - 1 > EXACT_RELATED_MAX_ITEMS
    if approximate:
        chunk = max(chunk, 16_384)  # faiss spreads one batch over every core
    for start in progress(range(1, n, chunk), -(-(n - 1) // chunk), "related items", unit="chunk"):
        rows = np.arange(start, min(start + chunk, n))
        if item_index is not None and approximate:
            near = item_index.search_many(embeddings[rows], width + 1, RELATED_EF_SEARCH)
        else:
            near = _exact_neighbours(embeddings, rows, width)
        for r, item in enumerate(rows.tolist()):
            co, _ = co_engagement.row(item)
            picked = list(co[:k].tolist())
            if len(picked) < k:
                seen = set(picked)
                seen.update((0, item))
                picked.extend(x for x in near[r].tolist() if x not in seen)
            picked = picked[:k]
            out[item, : len(picked)] = picked
    return out


def _csr(
    keys: np.ndarray, items: np.ndarray, n_keys: int, pop_rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR over ``n_keys`` keys -> distinct items, most popular first; key 0 (padding) stays empty."""
    valid = keys > 0
    keys, items = keys[valid], items[valid]
    codes = np.unique(keys * (len(pop_rank) + 1) + items)
    keys, items = codes // (len(pop_rank) + 1), codes % (len(pop_rank) + 1)
    order = np.lexsort((pop_rank[items], keys))
    keys, items = keys[order], items[order]
    indptr = np.searchsorted(keys, np.arange(n_keys + 1), side="left").astype(np.int64)
    return indptr, items.astype(np.int64)


def user_histories(
    log: LogData, split: UserSplit, catalog: Catalog, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR over the catalogue's users -> each user's last ``max_len`` distinct played items of the
    training split, oldest first: what the server uses for a known user who sends no history.

    Training plays only, like the model's own history inputs: the held-out future stays unseen.
    """
    plays = log.events_of(EventType.PLAY)
    train = split.assign(plays.user, plays.timestamp_ms) == TRAIN
    users = catalog.users.indices(log.user_ids)[plays.user[train]]
    items = catalog.items.indices(log.items.item_ids)[plays.item[train]]
    order = np.lexsort((plays.timestamp_ms[train], users))
    users, items = users[order], items[order]
    starts = np.searchsorted(users, np.arange(len(catalog.users) + 1), side="left")
    indptr = np.zeros(len(catalog.users) + 1, dtype=np.int64)
    lists: list[np.ndarray] = []
    for user in range(1, len(catalog.users)):
        mine = items[starts[user] : starts[user + 1]]
        if len(mine):
            # The latest play of an item places it; keep the newest max_len, oldest first.
            _, last = np.unique(mine[::-1], return_index=True)
            mine = mine[::-1][np.sort(last)][:max_len][::-1]
            lists.append(mine)
        indptr[user + 1] = indptr[user] + len(mine)
    flat = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, dtype=np.int64)
    return indptr, flat


def build_retrieval(
    model: UniRankModel,
    catalog: Catalog,
    co_engagement: CoEngagement,
    histories: tuple[np.ndarray, np.ndarray] | None = None,
    item_index: ItemIndex | None = None,
) -> Retrieval:
    """Every array of ``retrieval.npz`` for one trained model and catalogue (``histories``: the
    users' stored histories, from :func:`user_histories`; ``item_index``: the HNSW index of
    :func:`item_embeddings`, which large catalogues' related-items lists search)."""
    popularity = np.asarray(catalog.popularity, dtype=np.float64)
    popular = popularity_order(popularity).astype(np.int64)
    n = len(catalog.items)
    pop_rank = np.full(n, n, dtype=np.int64)
    pop_rank[popular] = np.arange(len(popular))
    embeddings = item_embeddings(model)

    titles = catalog.title_token_matrix()
    item_of_token = np.repeat(np.arange(n), titles.shape[1])
    lexical_indptr, lexical_items = _csr(titles.ravel(), item_of_token, len(catalog.tokens), pop_rank)
    cats = catalog.category_matrix()
    item_of_cat = np.repeat(np.arange(n), cats.shape[1])
    category_indptr, category_items = _csr(cats.ravel(), item_of_cat, len(catalog.categories), pop_rank)
    return Retrieval(
        item_embeddings=embeddings,
        related_items=related_items(embeddings, co_engagement, item_index=item_index),
        popular_items=popular,
        lexical_indptr=lexical_indptr,
        lexical_items=lexical_items,
        category_indptr=category_indptr,
        category_items=category_items,
        **(
            {}
            if histories is None
            else {"user_history_indptr": histories[0], "user_history_items": histories[1]}
        ),
    )
