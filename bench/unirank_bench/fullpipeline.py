"""The full pipeline against the floor on the same candidates (issue #18, item 3).

UniRank's ``retrieval/<use-case>`` workloads send no candidates: cpu-realtime's retrieval picks
up to its cap (200; 300 for new releases) and its pre-rules drop some. The floor cannot retrieve,
so it is driven with ``retrieved/<use-case>``: the same requests carrying, as caller candidates,
exactly the items cpu-realtime scores for them (computed in-process by the pipeline's own
``candidates_for`` before the run). Both then score the same items per request; the floor parses
them from the request, UniRank finds them. The targets:

- C = 32 throughput of UniRank ≥ 0.8 × the bare aio + ONNX Runtime floor's;
- C = 1 p50 of UniRank ≤ 1.25 × the floor's.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from unirank_bench.report import _fmt, _p50, _table, _verdict, find
from unirank_bench.workload import MIXED, USE_CASES, BenchRequest

RETRIEVAL_PREFIX = "retrieval/"
"""UniRank's workloads whose requests carry no candidates: the profile's retrieval picks."""
SCORED_PREFIX = "retrieved/"
"""The floor's (and MLServer's) twins of those: each request with the candidates UniRank scores."""
PROFILE = "cpu-realtime"
THROUGHPUT_RATIO = 0.8
P50_RATIO = 1.25


def scored_workloads(
    artifact_dir: Path, profile_path: Path, workloads: dict[str, list[BenchRequest]]
) -> dict[str, list[BenchRequest]]:
    """Each workload's requests with ``candidate_item_ids`` set to what the profile's pipeline would
    score for them (retrieval, then pre-rules); requests it answers without the model (a cold
    start, nothing retrieved) are left out."""
    return asyncio.run(_scored(artifact_dir, profile_path, workloads))


async def _scored(
    artifact_dir: Path, profile_path: Path, workloads: dict[str, list[BenchRequest]]
) -> dict[str, list[BenchRequest]]:
    from unirank.server.config import load_profile
    from unirank.server.domain import RankRequest
    from unirank.server.pipeline import RankingPipeline
    from unirank.server.request_context import with_stored_history
    from unirank.server.runtime import ModelRuntime

    profile = load_profile(profile_path)
    model = profile.model.model_copy(update={"warmup_requests": 0})
    runtime = await ModelRuntime.load(artifact_dir, model)
    try:
        pipeline = RankingPipeline(profile, runtime)
        keys = runtime.encoder.catalog.items.keys
        out: dict[str, list[BenchRequest]] = {}
        for name, requests in workloads.items():
            scored = []
            for bench_request in requests:
                request = RankRequest(context=bench_request.context())
                if request.context.user_id and not request.context.history_item_ids:
                    request, _ = with_stored_history(request, runtime)  # as the pipeline does
                task = pipeline.task_runtime(request.task)
                window = runtime.retriever.release_window(0, 0) if task.uses_release_window else None
                found = pipeline.candidates_for(request, task, runtime, window)
                if found is None or not len(found[1]):
                    continue
                ids = tuple(keys[i] for i in found[1].items.tolist())
                scored.append(replace(bench_request, candidate_item_ids=ids))
            out[name] = scored
        return out
    finally:
        await runtime.close()


def use_cases(results: dict[str, Any]) -> list[str]:
    """The use-cases (and mixed) this run measured the full pipeline on."""
    return [
        w
        for w in [*USE_CASES, MIXED]
        if find(results, f"unirank/{PROFILE}", RETRIEVAL_PREFIX + w) is not None
        or find(results, "floor/aio-ort", SCORED_PREFIX + w) is not None
    ]


def _candidates(results: dict[str, Any], use_case: str) -> str:
    about = results.get("workloads", {}).get(SCORED_PREFIX + use_case)
    return f"{about['candidates_mean']:.0f}" if about else "–"


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Two verdicts per use-case: C = 32 throughput and C = 1 p50 against the floor."""
    verdicts = []
    mine_name = f"unirank/{PROFILE}"
    for use_case in use_cases(results):
        mine = find(results, mine_name, RETRIEVAL_PREFIX + use_case, 32)
        floor = find(results, "floor/aio-ort", SCORED_PREFIX + use_case, 32)
        verdicts.append(
            _verdict(
                f"{PROFILE} full pipeline C=32 {use_case}: throughput / aio + ORT floor on the same "
                f"candidates >= {THROUGHPUT_RATIO}",
                mine["throughput_rps"] / floor["throughput_rps"] if mine and floor else None,
                THROUGHPUT_RATIO,
                f"{_fmt(mine and mine['throughput_rps'], 0)} vs {_fmt(floor and floor['throughput_rps'], 0)} "
                f"requests/s, {_candidates(results, use_case)} candidates (mean)",
                at_most=False,
            )
        )
        mine1 = _p50(find(results, mine_name, RETRIEVAL_PREFIX + use_case, 1))
        floor1 = _p50(find(results, "floor/aio-ort", SCORED_PREFIX + use_case, 1))
        verdicts.append(
            _verdict(
                f"{PROFILE} full pipeline C=1 {use_case}: p50 / aio + ORT floor p50 on the same "
                f"candidates <= {P50_RATIO}",
                mine1 / floor1 if mine1 and floor1 else None,
                P50_RATIO,
                f"p50 {_fmt(mine1)} vs {_fmt(floor1)} ms",
                at_most=True,
            )
        )
    return verdicts


def markdown(results: dict[str, Any]) -> list[str]:
    """The side-by-side table (empty when the run had no full-pipeline runs)."""
    rows = []
    mine_name = f"unirank/{PROFILE}"
    for use_case in use_cases(results):
        mine32 = find(results, mine_name, RETRIEVAL_PREFIX + use_case, 32)
        floor32 = find(results, "floor/aio-ort", SCORED_PREFIX + use_case, 32)
        peer32 = find(results, "mlserver", SCORED_PREFIX + use_case, 32)
        mine1 = find(results, mine_name, RETRIEVAL_PREFIX + use_case, 1)
        floor1 = find(results, "floor/aio-ort", SCORED_PREFIX + use_case, 1)
        rps = [r and r["throughput_rps"] for r in (mine32, floor32, peer32)]
        cpu = [r and r["server_cpu_ms_per_request"] for r in (mine32, floor32)]
        rows.append(
            [
                use_case,
                _candidates(results, use_case),
                *(_fmt(x, 0) for x in rps),
                _fmt(rps[0] / rps[1] if rps[0] and rps[1] else None),
                _fmt(rps[0] / rps[2] if rps[0] and rps[2] else None),
                *(_fmt(x, 3) for x in cpu),
                _fmt(_p50(mine1)),
                _fmt(_p50(floor1)),
                _fmt(_p50(mine1) / _p50(floor1) if _p50(mine1) and _p50(floor1) else None),  # type: ignore[operator]
            ]
        )
    if not rows:
        return []
    return [
        "### Full pipeline against the floor on the same candidates (issue #18)",
        "",
        f"UniRank {PROFILE} with retrieval on (`retrieval/…`: no caller candidates) against the bare "
        "aio + ONNX Runtime floor and MLServer sent, as caller candidates, exactly the items UniRank "
        "scores for each request (`retrieved/…`). Targets: C = 32 throughput ratio ≥ "
        f"{THROUGHPUT_RATIO}, C = 1 p50 ratio ≤ {P50_RATIO}.",
        "",
        *_table(
            [
                "use-case",
                "candidates (mean)",
                "UniRank req/s (C=32)",
                "floor req/s (C=32)",
                "MLServer req/s (C=32)",
                "UniRank / floor",
                "UniRank / MLServer",
                "UniRank CPU ms/req",
                "floor CPU ms/req",
                "UniRank p50 ms (C=1)",
                "floor p50 ms (C=1)",
                "p50 ratio",
            ],
            rows,
        ),
        "",
    ]
