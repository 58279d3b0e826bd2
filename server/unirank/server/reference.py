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
from unirank.artifact.tasks import task_by_type
from unirank.artifact.text import tokenize
from unirank.server.domain import RankRequest
from unirank.server.pipeline import RankingPipeline
from unirank.server.runtime import ModelRuntime
from unirank.server.telemetry import ScoreReference

REFERENCE_REQUESTS = 200
"""Requests per use-case the server scores at load to measure its reference."""
MIN_REFERENCE_SCORES = 20
"""Fewer top scores than this would make quantile bins of one or two scores: the use-case keeps its
offline reference."""


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


async def score_references(
    pipeline: RankingPipeline, runtime: ModelRuntime, requests_per_task: int = REFERENCE_REQUESTS
) -> dict[str, ScoreReference]:
    """Per served task, the distribution of ``runtime``'s top score over the candidates the
    pipeline's retrieval and pre-rules give requests like its traffic (:func:`reference_contexts`):
    the reference live top scores are compared with (drift, PSI). Tasks it cannot ask are left out."""
    references: dict[str, ScoreReference] = {}
    for task_type, task in pipeline.tasks.items():
        if not runtime.has_head(task_by_type(task_type)):
            continue
        window = runtime.retriever.release_window(0, 0) if task.uses_release_window else None
        tops = []
        for context in reference_contexts(runtime.artifact, task_type, requests_per_task):
            found = pipeline.candidates_for(RankRequest(context=context), task, runtime, window)
            if found is not None and len(found[1]):
                encoded, candidates = found
                inputs = runtime.encoder.batch([encoded], candidates.items[None, :])
                tops.append(float((await runtime.backend.score(inputs))[0].max()))
        if len(tops) >= MIN_REFERENCE_SCORES:
            references[task.name] = ScoreReference.from_scores(tops)
    return references
