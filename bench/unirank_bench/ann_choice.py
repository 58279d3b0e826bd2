"""Which approximate nearest-neighbour library retrieval should use: faiss-cpu against usearch.

Both build an HNSW graph over L2-normalised item embeddings (inner product), the shape the
``embedding`` retrieval source searches. For each catalogue size this measures build time, index
size, single-query latency at k = 200 (what one request asks) and recall@200 against exact search,
on clustered vectors like learned item embeddings, with queries like the server's (one item for
related items, the mean of a short history for notification).

    PYTHONPATH=bench .venv/bin/python -m unirank_bench.ann_choice --sizes 30000,300000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

K = 200


def clustered_embeddings(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` centroids (genres), row 0 the zero padding row."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(clusters, dim)).astype(np.float32)
    members = rng.integers(clusters, size=n)
    vectors = centroids[members] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.vstack([np.zeros((1, dim), np.float32), vectors]).astype(np.float32)


def queries_like_requests(embeddings: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Half single items (related items), half the mean of 1-5 items (a history)."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for i in range(count):
        items = rng.integers(1, len(embeddings), size=1 if i % 2 == 0 else int(rng.integers(1, 6)))
        query = embeddings[items].mean(axis=0)
        out.append(query / max(float(np.linalg.norm(query)), 1e-12))
    return np.asarray(out, dtype=np.float32)


def exact_top(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ embeddings.T
    sims[:, 0] = -np.inf
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    return top


def recall(found: list[np.ndarray], exact: np.ndarray) -> float:
    hits = [len(set(f.tolist()) & set(e.tolist())) / len(e) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits))


def time_queries(search: Any, queries: np.ndarray) -> tuple[list[np.ndarray], float]:
    found = []
    started = time.perf_counter()
    for query in queries:
        found.append(search(query))
    return found, (time.perf_counter() - started) / len(queries) * 1e6


def measure_faiss(embeddings: np.ndarray, queries: np.ndarray, exact: np.ndarray) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(embeddings.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(embeddings[1:])
    build_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index, f"{tmp}/x.faiss")
        size = Path(f"{tmp}/x.faiss").stat().st_size
    out: dict[str, Any] = {"build_s": build_s, "index_mb": size / 2**20, "by_ef": {}}
    for ef in (256, 400):
        index.hnsw.efSearch = ef

        def search(query: np.ndarray) -> np.ndarray:
            _, ids = index.search(query[None, :], K)
            return ids[0] + 1  # the index holds rows 1.., ids are 0-based

        found, us = time_queries(search, queries)
        out["by_ef"][ef] = {"query_us": us, "recall": recall(found, exact)}
    return out


def measure_usearch(embeddings: np.ndarray, queries: np.ndarray, exact: np.ndarray) -> dict[str, Any]:
    from usearch.index import Index

    started = time.perf_counter()
    index = Index(ndim=embeddings.shape[1], metric="ip", dtype="f32", connectivity=16, expansion_add=80)
    index.add(np.arange(1, len(embeddings)), embeddings[1:], threads=1)
    build_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        index.save(f"{tmp}/x.usearch")
        size = Path(f"{tmp}/x.usearch").stat().st_size
    out: dict[str, Any] = {"build_s": build_s, "index_mb": size / 2**20, "by_ef": {}}
    for ef in (256, 400):
        index.expansion_search = ef

        def search(query: np.ndarray) -> np.ndarray:
            return np.asarray(index.search(query, K, threads=1).keys)

        found, us = time_queries(search, queries)
        out["by_ef"][ef] = {"query_us": us, "recall": recall(found, exact)}
    return out


def measure_exact(embeddings: np.ndarray, queries: np.ndarray) -> float:
    def search(query: np.ndarray) -> np.ndarray:
        sims = embeddings @ query
        sims[0] = -np.inf
        top = np.argpartition(-sims, K)[:K]
        return top[np.argsort(-sims[top])]

    _, us = time_queries(search, queries[:200])
    return us


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="30000,300000")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/ann_choice.json"))
    args = parser.parse_args(argv)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        embeddings = clustered_embeddings(n, args.dim, clusters=max(16, n // 2000), seed=0)
        queries = queries_like_requests(embeddings, args.queries, seed=0)
        exact = exact_top(embeddings, queries, K)
        row = {
            "items": n,
            "exact_query_us": measure_exact(embeddings, queries),
            "faiss": measure_faiss(embeddings, queries, exact),
            "usearch": measure_usearch(embeddings, queries, exact),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
