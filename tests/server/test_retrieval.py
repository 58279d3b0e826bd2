"""Candidate retrieval: sources in order, earlier ones win duplicates, quotas and the cap hold,
and the work per request does not depend on the catalogue's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unirank.artifact import Artifact, Context, TaskType, load_artifact
from unirank.server.config import RetrievalConfig, RetrievalSourceConfig
from unirank.server.domain import Source
from unirank.server.retrieval import Retriever

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
