"""The related-items lists: co-engaged items first, embedding neighbours after, exact for small
catalogues and searched in the HNSW item index for large ones (no n² work)."""

from __future__ import annotations

import numpy as np
import pytest

from unirank.artifact.ann import build_item_index
from unirank.training import retrieval
from unirank.training.baselines import CoEngagement
from unirank.training.retrieval import related_items


def clustered_embeddings(n_items: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """[n_items + 1, dim] unit vectors around a few centroids, row 0 zeros (like learned items)."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((8, dim))
    vectors = centroids[rng.integers(0, 8, size=n_items)] + 0.6 * rng.standard_normal((n_items, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.vstack([np.zeros((1, dim)), vectors]).astype(np.float32)


def co_engagement(n: int, pairs: dict[int, list[int]]) -> CoEngagement:
    """Co-engagement rows given as item -> neighbours, best first."""
    indptr = np.zeros(n + 2, dtype=np.int64)
    neighbours: list[int] = []
    for item in range(n + 1):
        neighbours += pairs.get(item, [])
        indptr[item + 1] = len(neighbours)
    flat = np.asarray(neighbours, dtype=np.int64)
    return CoEngagement(indptr=indptr, neighbours=flat, counts=np.ones_like(flat))


def test_the_index_lists_match_the_exact_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    n, k = 2000, 20
    embeddings = clustered_embeddings(n)
    co = co_engagement(n, {5: [7, 9], 11: [3]})
    exact = related_items(embeddings, co, k=k)
    index = build_item_index(embeddings)
    # Below the threshold an index changes nothing: the lists stay exact.
    assert np.array_equal(related_items(embeddings, co, k=k, item_index=index), exact)
    monkeypatch.setattr(retrieval, "EXACT_RELATED_MAX_ITEMS", 100)
    approximate = related_items(embeddings, co, k=k, chunk=256, item_index=index)
    assert approximate.shape == exact.shape == (n + 1, k)
    assert not approximate[0].any()
    rows = np.arange(1, n + 1)
    assert not (approximate[1:] == rows[:, None]).any()  # never the item itself
    assert approximate[5, :2].tolist() == [7, 9] and approximate[11, 0] == 3  # co-engaged first
    assert all(len(set(row[row > 0].tolist())) == len(row[row > 0]) for row in approximate[1:])
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(approximate[1:], exact[1:], strict=True)])
    assert overlap > 0.9, overlap  # unrelated lists would overlap ~ k / n
