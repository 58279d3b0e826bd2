"""Requests like the traffic a use-case gets, drawn from the artifact: what the server's own score
reference for drift (PSI) is measured on.

The reference must describe the top score of the candidate sets this profile's retrieval and
pre-rules produce. Training can only measure it over the whole catalogue, whose top score is
higher than any retrieved subset's, so healthy traffic read as drift (PSI 6 to 8). The server
therefore scores these requests itself at load, through the same retrieval, rules and backend.
"""

from __future__ import annotations

import numpy as np

from unirank.artifact import Artifact, Context, TaskType
from unirank.artifact.text import tokenize

REFERENCE_REQUESTS = 200
"""Requests per use-case the server scores at load to measure its reference."""


def reference_contexts(artifact: Artifact, task: TaskType, count: int, seed: int = 0) -> list[Context]:
    """Up to ``count`` request contexts of ``task`` like its traffic: known users with their stored
    histories, popular anchors, queries of popular titles' words, popular items' categories.
    Empty for a task this module does not know how to ask (its offline reference stays)."""
    rng = np.random.default_rng(seed)
    catalog, retrieval = artifact.catalog, artifact.retrieval
    popular = retrieval.popular_items[: max(count * 5, 50)]
    # Popular items weigh more, as traffic does: a Zipf-like draw over the popularity ranks.
    weights = 1.0 / np.arange(1, len(popular) + 1)
    picks: list[int] = (
        popular[rng.choice(len(popular), size=count, p=weights / weights.sum())].tolist()
        if len(popular)
        else []
    )
    if task in (TaskType.NOTIFICATION, TaskType.NEW_RELEASES):
        lengths = np.diff(retrieval.user_history_indptr)
        users = np.flatnonzero(lengths > 0)
        if not len(users):
            return []
        chosen = rng.choice(users, size=min(count, len(users)), replace=False)
        return [
            Context(
                task=task,
                user_id=catalog.users.key(int(user)),
                history_item_ids=tuple(catalog.items.key(int(i)) for i in retrieval.user_history(int(user))),
            )
            for user in chosen
        ]
    if task is TaskType.RELATED_ITEMS:
        return [Context(task=task, anchor_item_id=catalog.items.key(int(item))) for item in picks]
    if task is TaskType.SEARCH:
        contexts = []
        for item in picks:
            words = [w for w in tokenize(catalog.titles[int(item)]) if not w.isdigit()]
            if words:
                size = min(len(words), 1 + int(rng.integers(2)))
                start = int(rng.integers(len(words) - size + 1))
                contexts.append(Context(task=task, query=" ".join(words[start : start + size])))
        return contexts
    if task is TaskType.CATEGORY:
        return [Context(task=task, category_id=catalog.primary_category(int(item))) for item in picks]
    return []
