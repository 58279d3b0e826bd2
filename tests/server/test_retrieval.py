"""Candidate retrieval: sources in order, earlier ones win duplicates, quotas and the cap hold,
and the work per request does not depend on the catalogue's size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from unirank.artifact import Artifact, ArtifactError, Context, TaskType, load_artifact
from unirank.artifact.ann import ITEM_INDEX, ItemIndex, build_item_index
from unirank.server import retrieval
from unirank.server.config import RetrievalConfig, RetrievalSourceConfig
from unirank.server.domain import Source
from unirank.server.retrieval import Retriever, check_item_index

SOURCES = ("history", "related", "lexical", "embedding", "category", "popular", "new_releases")


@pytest.fixture(scope="module")
def artifact(artifact_dir: Path) -> Artifact:
    return load_artifact(artifact_dir)


def reference_retrieve(retriever: Retriever, n_items: int, encoded, config: RetrievalConfig):  # type: ignore[no-untyped-def]
    """The definition, with a catalogue-sized 'seen' mask: what the server must return."""
    seen = np.zeros(n_items, dtype=bool)
    seen[0] = True
    items, sources, remaining = [], [], config.max_candidates
    for source in config.sources:
        if remaining <= 0:
            break
        if source.source == "new_releases":
            found = retriever.new_releases(retriever.release_window(0, 0))
        else:
            found = retriever._fns[source.source](encoded, source.quota)
        kept: list[int] = []
        for item in found.tolist():
            if not seen[item] and len(kept) < min(source.quota, remaining):
                seen[item] = True
                kept.append(item)
        items += kept
        sources += [source.source] * len(kept)
        remaining -= len(kept)
    return items, sources


def test_retrieval_matches_its_definition_on_random_requests(artifact: Artifact) -> None:
    retriever = Retriever(artifact)
    catalog = artifact.catalog
    rng = np.random.default_rng(0)
    n_items = len(catalog.items)
    for _ in range(200):
        names = rng.choice(SOURCES, size=int(rng.integers(1, 4)), replace=False)
        config = RetrievalConfig(
            sources=tuple(
                RetrievalSourceConfig(source=str(n), quota=int(rng.integers(1, 120))) for n in names
            ),
            max_candidates=int(rng.integers(1, 250)),
        )
        history = [catalog.items.key(int(i)) for i in rng.integers(1, n_items, size=int(rng.integers(0, 6)))]
        context = Context(
            task=TaskType.NOTIFICATION,
            user_id=catalog.users.key(int(rng.integers(1, len(catalog.users)))),
            history_item_ids=tuple(history),
            query=catalog.tokens.key(int(rng.integers(1, len(catalog.tokens)))),
            anchor_item_id=catalog.items.key(int(rng.integers(1, n_items))),
            category_id=catalog.categories.key(int(rng.integers(1, len(catalog.categories)))),
        )
        encoded = artifact.encoder().encode(context)
        got = retriever.retrieve(encoded, config)
        items, sources = reference_retrieve(retriever, n_items, encoded, config)
        assert got.items.tolist() == items
        assert [Source(int(s)).name.lower() for s in got.sources] == sources
        assert len(set(got.items.tolist())) == len(got.items) and 0 not in got.items.tolist()


def test_the_item_index_finds_the_exact_nearest_items(artifact: Artifact, tmp_path: Path) -> None:
    embeddings = artifact.retrieval.item_embeddings
    build_item_index(embeddings, tmp_path / ITEM_INDEX)
    index = ItemIndex.load(tmp_path / ITEM_INDEX)
    assert index.n_items == len(embeddings) - 1
    rng = np.random.default_rng(1)
    k = min(200, len(embeddings) - 1)
    recalls = []
    for item in rng.integers(1, len(embeddings), size=50).tolist():
        sims = embeddings @ embeddings[item]
        sims[0] = -np.inf
        exact = set(np.argsort(-sims)[:k].tolist())
        found = index.search(embeddings[item], k)
        assert 0 not in found.tolist() and len(found) == k
        recalls.append(len(exact & set(found.tolist())) / k)
    assert float(np.mean(recalls)) >= 0.95


def test_approximate_embedding_retrieval_uses_the_shipped_index(artifact: Artifact) -> None:
    retriever = Retriever(artifact)
    assert retriever.item_index is not None, "training ships the item index with every artifact"
    catalog = artifact.catalog
    encoded = artifact.encoder().encode(
        Context(task=TaskType.RELATED_ITEMS, anchor_item_id=catalog.items.key(7))
    )
    exact = RetrievalConfig(sources=(RetrievalSourceConfig(source="embedding", quota=50),), max_candidates=50)
    approximate = exact.model_copy(update={"embedding_search": "approximate"})
    found_exact = set(retriever.retrieve(encoded, exact).items.tolist())
    found_approximate = set(retriever.retrieve(encoded, approximate).items.tolist())
    assert len(found_exact & found_approximate) >= 0.9 * len(found_exact)


def test_a_version_without_the_index_is_refused_when_the_profile_asks_for_it(
    artifact: Artifact, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(artifact.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"][ITEM_INDEX]
    (old / ITEM_INDEX).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    retriever = Retriever(load_artifact(old))
    approximate = RetrievalConfig(
        sources=(RetrievalSourceConfig(source="embedding", quota=10),), embedding_search="approximate"
    )
    check_item_index([approximate.model_copy(update={"embedding_search": "exact"})], retriever, "v")
    with pytest.raises(ArtifactError, match=r"ships no item_index\.faiss"):
        check_item_index([approximate], retriever, "v")


def test_the_lexical_top_is_the_whole_merge_s_first_items() -> None:
    """Several words' lists merged from the shorter lists and the heads (``_top_lexical``) give
    the same first n items, in the same order, as merging the whole lists (``_merged_lexical``):
    random lists in one popularity order, long and short, overlapping and not, ties in place."""
    rng = np.random.default_rng(0)
    n_items = 600
    by_rank = rng.permutation(np.arange(1, n_items)).astype(np.int32)
    rank = np.full(n_items, len(by_rank), dtype=np.int32)
    rank[by_rank] = np.arange(len(by_rank), dtype=np.int32)
    for _ in range(300):
        lists = []
        for _ in range(int(rng.integers(2, 5))):
            size = int(rng.choice([1, 5, 40, 300, 590]))
            places = np.sort(rng.choice(len(by_rank), size=size, replace=False))
            lists.append(by_rank[places])
        n = int(rng.integers(1, 400))
        merged = retrieval._merged_lexical(lists)
        assert retrieval._top_lexical(lists, rank, by_rank, n).tolist() == merged[:n].tolist()


def test_multi_word_search_lists_the_whole_merge_s_first_items(artifact: Artifact) -> None:
    retriever = Retriever(artifact)
    assert retriever._popularity_rank is not None  # training writes the lists in popularity order
    tokens, rng = artifact.catalog.tokens, np.random.default_rng(1)
    for _ in range(100):
        words = rng.choice(np.arange(1, len(tokens)), size=int(rng.integers(2, 5)), replace=False)
        query = " ".join(tokens.key(int(w)) for w in words)
        encoded = artifact.encoder().encode(Context(task=TaskType.SEARCH, query=query))
        lists = [artifact.retrieval.lexical(int(t)) for t in np.unique(encoded.query_tokens)]
        lists = [x for x in lists if len(x)]
        merged = retrieval._merged_lexical(lists) if len(lists) > 1 else np.concatenate([*lists, []])
        quota = int(rng.integers(1, 150))
        assert retriever._lexical(encoded, quota).tolist() == merged[: 2 * quota].tolist()
