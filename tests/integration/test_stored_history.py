"""A known user who sends no history is answered from the history the artifact ships (training
plays), with those items excluded; a sent history always wins; older artifacts still load."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import ServerFactory, profile_with, running_server
from unirank.artifact import load_artifact
from unirank.artifact.store import RETRIEVAL_ARRAYS, Retrieval
from unirank.client import AsyncRecommenderClient


def _user_with_history(artifact_dir: Path) -> tuple[str, list[str]]:
    artifact = load_artifact(artifact_dir)
    catalog, retrieval = artifact.catalog, artifact.retrieval
    lengths = np.diff(retrieval.user_history_indptr)
    user = int(np.argmax(lengths >= 5))
    assert lengths[user] >= 5, "the test artifact ships no user with a history"
    return catalog.users.key(user), [catalog.items.key(i) for i in retrieval.user_history(user).tolist()]


async def test_a_known_user_without_history_gets_a_personal_ranking_without_seen_items(
    server_factory: ServerFactory, artifact_dir: Path
) -> None:
    user, seen = _user_with_history(artifact_dir)
    async with (
        server_factory("cpu-realtime") as server,
        AsyncRecommenderClient(f"127.0.0.1:{server.port}") as client,
    ):
        stored = await client.notification(user, max_results=20)
        sent = await client.notification(user, history_item_ids=seen[-3:], max_results=20)
        unknown = await client.notification("nobody-knows-me", history_item_ids=seen[-3:], max_results=20)
    assert not stored.fallback and stored.stored_history
    assert not set(stored.item_ids) & set(seen), "items the user already played were recommended"
    assert not sent.stored_history and not unknown.stored_history
    # The stored history changes the answer: without it the same user would be ranked from three
    # items only.
    assert stored.item_ids != sent.item_ids


def test_an_artifact_without_stored_histories_loads_with_none(tmp_path: Path, artifact_dir: Path) -> None:
    full = load_artifact(artifact_dir).retrieval
    old = tmp_path / "retrieval.npz"
    np.savez(old, **{name: getattr(full, name) for name in RETRIEVAL_ARRAYS})
    loaded = Retrieval.load(old)
    assert len(loaded.user_history(1)) == 0 and len(full.user_history_items) > 0


async def test_a_profile_can_search_embeddings_approximately(artifact_dir: Path) -> None:
    retrieval = {
        "sources": [{"source": "embedding", "quota": 100}],
        "embedding_search": "approximate",
        "ann_ef_search": 64,
    }
    profile = profile_with("cpu-realtime", tasks={"related_items": {"retrieval": retrieval}})
    artifact = load_artifact(artifact_dir)
    anchor = artifact.catalog.items.key(int(artifact.retrieval.popular_items[0]))
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(f"127.0.0.1:{server.port}") as client,
    ):
        ranking = await client.related_items(anchor, max_results=20, debug=True)
    assert not ranking.fallback and len(ranking.items) == 20
    assert {item.retrieval_source for item in ranking.items} == {"embedding"}
