"""CPU per request of each step of the cpu-realtime hot path, in-process (no gRPC, no load).

    PYTHONPATH=bench .venv/bin/python -m unirank_bench.hotpath --artifact build/bench-artifact
    PYTHONPATH=bench .venv/bin/python -m unirank_bench.hotpath --retrieval --stages --workload all

Process CPU time (all threads) per request, best of three passes over the same requests, is
far less sensitive to other processes on the machine than end-to-end latency under load, so it
is the number to compare before and after a hot-path change. The steps:

- ``decode``: ``codec.request_from_pb`` (validation + conversion) of parsed requests;
- ``recommend``: ``RankingPipeline.recommend`` with the profile's real backend, as a server runs
  it for a call that is alone (one request at a time: scored on the loop where the profile's
  ``inline_when_alone`` says so, else with the hop to a scoring thread); the response cache is
  off so every request is ranked;
- ``encode_response``: ``codec.response_to_pb``;
- ``score_only``: the backend's ``score_sync`` on the already encoded inputs (the model alone);
- ``recommend_no_model``: ``recommend`` with a backend answering canned scores at no cost: the
  pipeline's own work (validation aside), the number to drive down.

``--retrieval`` sends no caller candidates (the profile's retrieval picks them, as the bench's
``retrieval/…`` workloads do). ``--stages`` also times each stage of ``recommend`` on its own,
fed the previous stage's output: ``encode`` (context → vocabulary indices), ``retrieve``,
``pre_rules``, ``features`` (the model inputs: ``encoder.batch``), ``score`` (``score_sync``),
``post_rules`` (sort and the post-rules), ``answer`` (the response rows). What
``recommend_no_model`` spends beyond the stages but ``score`` is the pipeline's bookkeeping
(trace, impression id, arms, the coroutine).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unirank_bench.servers import PROFILES, REPO
from unirank_bench.workload import MIXED, USE_CASES, build_workloads, model_inputs, to_unirank

STAGES = ("encode", "retrieve", "pre_rules", "features", "score", "post_rules", "answer")


async def _cpu_per_call_us(fn: Callable[[Any], Awaitable[Any]], items: Sequence[Any]) -> tuple[float, float]:
    """(CPU µs, wall µs) per call, best of three passes."""
    best = (float("inf"), float("inf"))
    for _ in range(3):
        cpu, wall = time.process_time(), time.perf_counter()
        for item in items:
            await fn(item)
        n = len(items)
        best = min(best, ((time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6))
    return best


def _sync_cpu_per_call_us(fn: Callable[[Any], Any], items: Sequence[Any]) -> tuple[list[Any], float, float]:
    """(outputs, CPU µs, wall µs) per call, best of three passes; the outputs of the last pass."""
    best = (float("inf"), float("inf"))
    out: list[Any] = []
    for _ in range(3):
        cpu, wall = time.process_time(), time.perf_counter()
        out = [fn(item) for item in items]
        n = len(items)
        best = min(best, ((time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6))
    return out, *best


class _Canned:
    """Answers every call with fixed scores at no cost: what ``recommend`` spends besides the model."""

    name, device, inline = "canned", "cpu", True

    def __init__(self, real: Any) -> None:
        self._real = real
        self._scores = np.linspace(1.0, 0.0, 1000, dtype=np.float32)

    async def score(self, inputs: Any, deadline: float | None = None, *, tag: Any = None) -> np.ndarray:
        return np.broadcast_to(self._scores[: inputs.candidates.shape[1]], inputs.candidates.shape)

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def stage_costs(pipeline: Any, runtime: Any, requests: Sequence[Any]) -> dict[str, tuple[float, float]]:
    """CPU and wall µs per request of each stage of ``_rank``, run as the pipeline runs them.
    Cold-start requests (answered by the fallback, no stages) are left out."""
    from unirank.server.answers import answer
    from unirank.server.domain import Candidates
    from unirank.server.request_context import cold_start, rule_context, with_stored_history

    encoder, backend = runtime.encoder, runtime.backend
    prepared = []
    for request in requests:
        if request.context.user_id and not request.context.history_item_ids:
            request, _ = with_stored_history(request, runtime)
        task = pipeline.task_runtime(request.task)
        window = (
            runtime.retriever.release_window(request.event_time_unix_ms, request.window_years)
            if task.uses_release_window
            else None
        )
        if not cold_start(request.task, encoder.encode(request.context)):
            prepared.append((request, task, window))
    costs: dict[str, tuple[float, float]] = {}

    def timed(name: str, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        out, cpu, wall = _sync_cpu_per_call_us(fn, items)
        costs[name] = (cpu, wall)
        return out

    encoded = timed("encode", lambda p: encoder.encode(p[0].context), prepared)
    rows = list(zip(prepared, encoded, strict=True))
    retrieved = timed(
        "retrieve", lambda r: pipeline._retrieve(r[0][0], r[0][1], runtime, r[1], r[0][2]), rows
    )
    contexts = [rule_context(runtime, e) for e in encoded]
    kept = timed(
        "pre_rules",
        lambda x: pipeline._pre_rules(x[0][0][0], x[0][0][1], runtime, x[1], x[2]),
        list(zip(rows, retrieved, contexts, strict=True)),
    )
    live = [(r, c, k) for r, c, k in zip(rows, contexts, kept, strict=True) if len(k)]
    inputs = timed(
        "features",
        lambda x: encoder.batch([x[0][1]], x[2].items[None, :], x[0][0][0].event_time_unix_ms or None),
        live,
    )
    scores = timed("score", lambda i: backend.score_sync(i)[0], inputs)

    def post(x: Any) -> Any:
        (_, c, k), s = x
        order = np.argsort(-s, kind="stable")
        ranked = Candidates(k.items[order], k.sources[order], s[order])
        for rule in x[0][0][0][1].post_rules:
            ranked = rule(ranked, c)
        return ranked

    ranked = timed("post_rules", post, list(zip(live, scores, strict=True)))
    timed(
        "answer",
        lambda x: answer(x[0][0][0][0], x[0][0][0][1], runtime, x[1], "hotpath", []),
        list(zip(live, ranked, strict=True)),
    )
    return costs


async def measure(
    artifact_dir: Path,
    profile_path: Path,
    requests: int,
    workload: str,
    retrieval: bool = False,
    stages: bool = False,
) -> dict[str, Any]:
    from unirank.artifact import load_artifact
    from unirank.server import codec
    from unirank.server.config import load_profile
    from unirank.server.pipeline import RankingPipeline
    from unirank.server.runtime import ModelRuntime
    from unirank.v1 import recommender_pb2 as pb

    artifact = load_artifact(artifact_dir)
    sampled = build_workloads(artifact, requests, seed=0, caller_candidates=not retrieval)[workload]
    messages = [pb.RecommendRequest.FromString(to_unirank(r, i)) for i, r in enumerate(sampled)]
    profile = load_profile(profile_path)
    tasks = {name: task.model_copy(update={"cache": task.cache.model_copy(update={"enabled": False})})
             for name, task in profile.tasks.items()}  # fmt: skip
    profile = profile.model_copy(update={"tasks": tasks})
    runtime = await ModelRuntime.load(artifact_dir, profile.model, alone=lambda: True)  # one call at a time
    try:
        pipeline = RankingPipeline(profile, runtime)
        ranked = [codec.request_from_pb(m) for m in messages]
        responses = [await pipeline.recommend(r) for r in ranked[:50]]  # warm-up

        async def decode(message: Any) -> None:
            codec.request_from_pb(message)

        async def recommend(request: Any) -> None:
            await pipeline.recommend(request)

        responses = [await pipeline.recommend(r) for r in ranked]

        async def encode_response(response: Any) -> None:
            codec.response_to_pb(response, False)

        backend: Any = runtime.backend

        async def score_only(model_input: Any) -> None:
            backend.score_sync(model_input)

        steps = {
            "decode": await _cpu_per_call_us(decode, messages),
            "recommend": await _cpu_per_call_us(recommend, ranked),
            "encode_response": await _cpu_per_call_us(encode_response, responses),
        }
        if hasattr(backend, "score_sync") and not retrieval:
            inputs = [model_inputs(artifact, r) for r in sampled]
            steps["score_only"] = await _cpu_per_call_us(score_only, inputs)
        if stages and hasattr(backend, "score_sync"):
            steps |= {f"stage:{k}": v for k, v in stage_costs(pipeline, runtime, ranked).items()}
        runtime.backend = _Canned(backend)
        steps["recommend_no_model"] = await _cpu_per_call_us(recommend, ranked)
        runtime.backend = backend
        scored = [r for r in responses if not r.fallback]
        return {
            "workload": workload,
            "requests": len(messages),
            "retrieval": retrieval,
            "candidates_mean": float(np.mean([len(r.candidate_item_ids) for r in sampled])),
            "fallbacks": len(responses) - len(scored),
            "steps": {name: {"cpu_us": cpu, "wall_us": wall} for name, (cpu, wall) in steps.items()},
        }
    finally:
        await runtime.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m unirank_bench.hotpath")
    parser.add_argument("--artifact", type=Path, default=REPO / "build" / "bench-artifact")
    parser.add_argument("--profile", type=Path, default=PROFILES / "cpu-realtime.toml")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--workload", default=MIXED, help="a use-case, mixed, or all (each in turn)")
    parser.add_argument("--retrieval", action="store_true", help="no caller candidates: retrieval picks")
    parser.add_argument("--stages", action="store_true", help="also time each stage of recommend")
    args = parser.parse_args(argv)
    workloads = [*USE_CASES, MIXED] if args.workload == "all" else [args.workload]
    for workload in workloads:
        result = asyncio.run(
            measure(args.artifact, args.profile, args.requests, workload, args.retrieval, args.stages)
        )
        mode = "retrieval" if args.retrieval else f"{result['candidates_mean']:.0f} caller candidates"
        print(f"{result['workload']}: {result['requests']} requests, {mode}, {result['fallbacks']} fallbacks")
        for name, step in result["steps"].items():
            print(
                f"  {name:<20} cpu {step['cpu_us']:7.1f} µs/request   wall {step['wall_us']:7.1f} µs/request"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
