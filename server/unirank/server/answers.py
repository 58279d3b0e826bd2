"""Turning a ranked candidate list into the answer a caller gets: the top rows with their ids,
titles, categories and sources, and the use-case's fallback ranking when the model did not answer."""

from __future__ import annotations

import numpy as np

from unirank.server.domain import SOURCES, Candidates, RankedItem, RankRequest, RankResponse, Source
from unirank.server.request_context import exclude_requested, rule_context
from unirank.server.retrieval import ReleaseWindow
from unirank.server.runtime import ModelRuntime
from unirank.server.task_runtime import TaskRuntime


def answer(
    request: RankRequest,
    task: TaskRuntime,
    runtime: ModelRuntime,
    ranked: Candidates,
    profile: str,
    timings: list[tuple[str, float]],
) -> RankResponse:
    """The top ``max_results`` of ``ranked`` as the response rows."""
    n = min(task.max_results(request.options.max_results), len(ranked))
    catalog = runtime.encoder.catalog
    keys, titles, category_keys = catalog.items.keys, catalog.titles, catalog.categories.keys
    top = ranked.items[:n]
    scores = ranked.scores[:n].tolist() if ranked.scores is not None else [0.0] * len(top)
    items = [
        RankedItem(keys[index], score, titles[index], category_keys[category], SOURCES[source])
        for index, score, category, source in zip(
            top.tolist(),
            scores,
            runtime.primary_category[top].tolist(),
            ranked.sources[:n].tolist(),
            strict=True,
        )
    ]
    return RankResponse(
        request_id=request.request_id,
        task=request.task,
        items=items,
        model_version=runtime.version,
        profile=profile,
        timings=timings,
    )


def fallback_ranking(
    request: RankRequest, task: TaskRuntime, runtime: ModelRuntime, window: ReleaseWindow | None
) -> Candidates:
    """The use-case's fallback list (``empty`` or a popular list), through its rules."""
    strategy = task.config.fallback.strategy
    if strategy == "empty":
        return Candidates(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.float32))
    encoded = runtime.encoder.encode(request.context)
    category = encoded.category if strategy == "popular_in_category" else 0
    limit = task.max_results(request.options.max_results) + task.config.retrieval.max_candidates
    items = runtime.retriever.popular(limit, category, window if strategy == "popular_new_releases" else None)
    ranked = Candidates(items, np.full(len(items), Source.POPULAR, np.int8), np.zeros(len(items), np.float32))
    ctx = rule_context(runtime, encoded)
    ranked = exclude_requested(request, runtime, ranked)
    for rule in (*task.pre_rules, *task.post_rules):
        ranked = rule(ranked, ctx)
    return ranked
