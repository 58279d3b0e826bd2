"""Requests like the traffic a use-case gets, drawn from the artifact: what the server's own score
reference for drift (PSI) is measured on.

The reference must describe the top score of the candidate sets this profile's retrieval and
pre-rules produce. Training can only measure it over the whole catalogue, whose top score is
higher than any retrieved subset's, so healthy traffic read as drift (PSI 6 to 8). The server
therefore scores these requests itself at load, through the same retrieval, rules and backend.
"""

from __future__ import annotations

import asyncio

import numpy as np

from unirank.artifact import Artifact, Context, TaskType
from unirank.artifact.tasks import task_by_type
from unirank.artifact.text import tokenize
from unirank.server.domain import RankRequest
from unirank.server.pipeline import RankingPipeline
from unirank.server.runtime import ModelRuntime
from unirank.server.task_runtime import TaskRuntime
from unirank.server.telemetry import ScoreReference

REFERENCE_REQUESTS = 200
"""Requests per use-case the server scores to measure its reference."""
CHECK_REQUESTS = 10
"""Of those, how many per use-case a starting server scores before it says SERVING (a graph that
fails on requests like its traffic never serves); the rest are scored while it serves."""
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


def measured_tasks(pipeline: RankingPipeline, runtime: ModelRuntime) -> list[tuple[TaskType, TaskRuntime]]:
    """The served tasks whose reference :func:`top_scores` measures: those ``runtime`` has a head for."""
    return [(t, task) for t, task in pipeline.tasks.items() if runtime.has_head(task_by_type(t))]


async def top_scores(
    pipeline: RankingPipeline, runtime: ModelRuntime, first: int = 0, last: int = REFERENCE_REQUESTS
) -> dict[str, list[float]]:
    """Per measured task (:func:`measured_tasks`), ``runtime``'s top score over the candidates the
    pipeline's retrieval and pre-rules give requests ``first`` to ``last`` of those like its traffic
    (:func:`reference_contexts`, the same for the same artifact), one request at a time. A graph
    that fails on them raises the backend's error."""
    tops: dict[str, list[float]] = {}
    for task_type, task in measured_tasks(pipeline, runtime):
        window = runtime.retriever.release_window(0, 0) if task.uses_release_window else None
        found_tops = tops.setdefault(task.name, [])
        for context in reference_contexts(runtime.artifact, task_type, REFERENCE_REQUESTS)[first:last]:
            found = pipeline.candidates_for(RankRequest(context=context), task, runtime, window)
            if found is not None and len(found[1]):
                encoded, candidates = found
                inputs = runtime.encoder.batch([encoded], candidates.items[None, :])
                found_tops.append(float((await runtime.backend.score(inputs))[0].max()))
            # Let calls in between: a model call made while no call is open runs inline
            # (inline_when_alone) and never suspends, and this runs after SERVING.
            await asyncio.sleep(0)
    return tops


def references_of(tops: dict[str, list[float]]) -> dict[str, ScoreReference]:
    """The drift references of the top scores per task (:func:`top_scores`): the reference live
    top scores are compared with (PSI). Tasks with too few scores are left out."""
    return {
        name: ScoreReference.from_scores(scores)
        for name, scores in tops.items()
        if len(scores) >= MIN_REFERENCE_SCORES
    }
