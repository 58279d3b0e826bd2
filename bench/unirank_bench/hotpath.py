"""CPU per request of each step of the cpu-realtime hot path, in-process (no gRPC, no load).

    PYTHONPATH=bench .venv/bin/python -m unirank_bench.hotpath --artifact build/bench-artifact

Process CPU time (all threads) per request, best of three passes over the same requests, is
far less sensitive to other processes on the machine than end-to-end latency under load, so it
is the number to compare before and after a hot-path change. The steps:

- ``decode``: ``codec.request_from_pb`` (validation + conversion) of parsed requests;
- ``recommend``: ``RankingPipeline.recommend`` with the profile's real backend (the executor hop
  included); the response cache is off so every request is ranked;
- ``encode_response``: ``codec.response_to_pb``;
- ``score_only``: the backend's ``score_sync`` on the already encoded inputs (the model alone);
- ``recommend_no_model``: ``recommend`` with a backend answering canned scores at no cost: the
  pipeline's own work (validation aside), the number to drive down.
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
from unirank_bench.workload import MIXED, build_workloads, model_inputs, to_unirank


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


async def measure(artifact_dir: Path, profile_path: Path, requests: int, workload: str) -> dict[str, Any]:
    from unirank.artifact import load_artifact
    from unirank.server import codec
    from unirank.server.config import load_profile
    from unirank.server.pipeline import RankingPipeline
    from unirank.server.runtime import ModelRuntime
    from unirank.v1 import recommender_pb2 as pb

    artifact = load_artifact(artifact_dir)
    sampled = build_workloads(artifact, requests, seed=0)[workload]
    messages = [pb.RecommendRequest.FromString(to_unirank(r, i)) for i, r in enumerate(sampled)]
    profile = load_profile(profile_path)
    tasks = {name: task.model_copy(update={"cache": task.cache.model_copy(update={"enabled": False})})
             for name, task in profile.tasks.items()}  # fmt: skip
    profile = profile.model_copy(update={"tasks": tasks})
    runtime = await ModelRuntime.load(artifact_dir, profile.model)
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

        inputs = [model_inputs(artifact, r) for r in sampled]
        backend: Any = runtime.backend

        async def score_only(model_input: Any) -> None:
            backend.score_sync(model_input)

        steps = {
            "decode": await _cpu_per_call_us(decode, messages),
            "recommend": await _cpu_per_call_us(recommend, ranked),
            "encode_response": await _cpu_per_call_us(encode_response, responses),
        }
        if hasattr(backend, "score_sync"):
            steps["score_only"] = await _cpu_per_call_us(score_only, inputs)
        runtime.backend = _Canned(backend)
        steps["recommend_no_model"] = await _cpu_per_call_us(recommend, ranked)
        runtime.backend = backend
        return {
            "workload": workload,
            "requests": len(messages),
            "candidates_mean": float(np.mean([len(r.candidate_item_ids) for r in sampled])),
            "steps": {name: {"cpu_us": cpu, "wall_us": wall} for name, (cpu, wall) in steps.items()},
        }
    finally:
        await runtime.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m unirank_bench.hotpath")
    parser.add_argument("--artifact", type=Path, default=REPO / "build" / "bench-artifact")
    parser.add_argument("--profile", type=Path, default=PROFILES / "cpu-realtime.toml")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--workload", default=MIXED)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.artifact, args.profile, args.requests, args.workload))
    print(f"{result['workload']}: {result['requests']} requests, {result['candidates_mean']:.0f} candidates")
    for name, step in result["steps"].items():
        print(f"  {name:<16} cpu {step['cpu_us']:7.1f} µs/request   wall {step['wall_us']:7.1f} µs/request")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
