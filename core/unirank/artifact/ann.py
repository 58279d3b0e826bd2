"""The approximate nearest-neighbour index over item embeddings that the artifact ships.

Built at training time (an HNSW graph, faiss-cpu, inner product over the L2-normalised item
embeddings of ``retrieval.npz``) and checksummed like every other file, so the ``embedding``
retrieval source can search a catalogue of millions in a fraction of a millisecond instead of
scoring every item. Why faiss: ``bench/unirank_bench/ann_choice.py`` measured it against usearch
(docs/benchmarks.md, "Approximate retrieval"). Item indices are the catalogue's (row 0, the padding
row, is never in the index).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

ITEM_INDEX = "item_index.faiss"
"""The index's file name inside an artifact directory."""
HNSW_NEIGHBOURS = 32
"""Graph degree M: more neighbours, better recall, a larger index."""
HNSW_EF_CONSTRUCTION = 80
"""Candidate list while building: higher builds slower and finds better neighbours."""
DEFAULT_EF_SEARCH = 512
"""Candidate list while searching; must be at least the number of items asked for."""


def _faiss(threads: int = 1) -> Any:
    """faiss with ``threads`` OpenMP threads: one to answer a request (the server runs many at
    once), every core to build."""
    # faiss's loader logs every CPU-specific build it tries (AVX512, AVX2) at INFO: noise at start.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency of the project
        raise ImportError("approximate retrieval needs faiss-cpu: pip install faiss-cpu") from exc
    faiss.omp_set_num_threads(threads)
    return faiss


def build_item_index(embeddings: np.ndarray, path: Path | None = None) -> ItemIndex:
    """The HNSW index of ``embeddings[1:]`` (row ``i`` is catalogue item ``i``), built with every
    core; written to ``path`` when given."""
    faiss = _faiss(os.cpu_count() or 1)
    try:
        vectors = np.ascontiguousarray(embeddings[1:], dtype=np.float32)
        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        if len(vectors):
            index.add(vectors)
        if path is not None:
            faiss.write_index(index, str(path))
    finally:
        faiss.omp_set_num_threads(1)
    return ItemIndex(index, int(index.ntotal))


class ItemIndex:
    """A loaded index: :meth:`search` answers the nearest items of one query vector."""

    def __init__(self, index: Any, n_items: int) -> None:
        self._index = index
        self._params = _faiss().SearchParametersHNSW
        self.n_items = n_items

    @classmethod
    def load(cls, path: Path) -> ItemIndex:
        """The index at ``path``, its vectors mapped from the file rather than read (faiss's
        ``IO_FLAG_MMAP_IFC``): at a million items hundreds of MB that need not be copied at start-up
        or held as anonymous memory; a faiss without the flag reads it."""
        faiss = _faiss()
        index = faiss.read_index(str(path), getattr(faiss, "IO_FLAG_MMAP_IFC", 0))
        return cls(index, int(index.ntotal))

    def search(self, query: np.ndarray, k: int, ef_search: int = DEFAULT_EF_SEARCH) -> np.ndarray:
        """Up to ``k`` catalogue item indices, nearest first (inner product with ``query``)."""
        k = min(k, self.n_items)
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        params = self._params(efSearch=max(ef_search, k))
        _, ids = self._index.search(np.ascontiguousarray(query, dtype=np.float32)[None, :], k, params=params)
        found = ids[0]
        return found[found >= 0].astype(np.int64) + 1  # index row r is catalogue item r + 1

    def save(self, path: Path) -> None:
        _faiss().write_index(self._index, str(path))

    def search_many(self, queries: np.ndarray, k: int, ef_search: int = DEFAULT_EF_SEARCH) -> np.ndarray:
        """int64 [Q, k]: the ``k`` nearest catalogue items of each query row, nearest first, 0 where
        fewer were found; searched with every core (an offline batch, not a request)."""
        k = min(k, self.n_items)
        if k <= 0 or not len(queries):
            return np.zeros((len(queries), max(k, 0)), dtype=np.int64)
        faiss = _faiss(os.cpu_count() or 1)
        try:
            params = self._params(efSearch=max(ef_search, k))
            _, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
        finally:
            faiss.omp_set_num_threads(1)
        return ids.astype(np.int64) + 1  # index row r is item r + 1; faiss's -1 (none found) becomes 0
