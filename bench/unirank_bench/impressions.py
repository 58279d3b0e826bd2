"""What the impression store costs a ranked request: in process, and in a real redis-server.

    PYTHONPATH=bench .venv/bin/python -m unirank_bench.impressions --artifact build/bench-artifact

``RankingPipeline.recommend`` (the profile's real backend, response cache off, so every request
is ranked and then issued as an impression) with ``[impressions] store`` = ``none``, ``memory``
and, when ``redis-server`` is on PATH, ``redis``; rounds alternate the stores, each starting with
the next one, so drift in the machine's load falls on all of them alike. Per store: process CPU
and wall time per request, the median of the rounds (each the best of three passes, as in
:mod:`unirank_bench.hotpath`), and the throughput cost against ``none`` (a request's CPU time
bounds a core's requests per second).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from unirank_bench.hotpath import _cpu_per_call_us
from unirank_bench.servers import PROFILES, REPO
from unirank_bench.workload import MIXED, build_workloads, to_unirank


def _redis(tmp: str) -> tuple[subprocess.Popen[bytes], str] | None:
    if shutil.which("redis-server") is None:
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    return None


async def measure(artifact_dir: Path, profile_path: Path, requests: int, rounds: int) -> dict[str, Any]:
    from unirank.artifact import load_artifact
    from unirank.server import codec
    from unirank.server.config import load_profile
    from unirank.server.pipeline import RankingPipeline
    from unirank.server.runtime import ModelRuntime
    from unirank.v1 import recommender_pb2 as pb

    artifact = load_artifact(artifact_dir)
    sampled = build_workloads(artifact, requests, seed=0)[MIXED]
    messages = [pb.RecommendRequest.FromString(to_unirank(r, i)) for i, r in enumerate(sampled)]
    ranked = [codec.request_from_pb(m) for m in messages]
    base = load_profile(profile_path)
    tasks = {name: task.model_copy(update={"cache": task.cache.model_copy(update={"enabled": False})})
             for name, task in base.tasks.items()}  # fmt: skip
    base = base.model_copy(update={"tasks": tasks})
    tmp = tempfile.mkdtemp(prefix="unirank-bench-redis-")
    redis = _redis(tmp)
    stores: dict[str, dict[str, object]] = {"none": {"store": "none"}, "memory": {"store": "memory"}}
    if redis is not None:
        stores["redis"] = {"store": "redis", "redis_url": redis[1], "timeout_ms": 1000.0}
    runtime = await ModelRuntime.load(artifact_dir, base.model)
    pipelines = {}
    try:
        for name, section in stores.items():
            impressions = base.impressions.model_copy(update=section)
            pipelines[name] = RankingPipeline(base.model_copy(update={"impressions": impressions}), runtime)
        for pipeline in pipelines.values():
            for request in ranked[:50]:
                await pipeline.recommend(request)  # warm-up
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
        names = list(pipelines)
        for round_ in range(rounds):
            # Each round starts with another store: none is always measured first or last.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                pipeline = pipelines[name]

                async def recommend(request: Any, pipeline: RankingPipeline = pipeline) -> None:
                    await pipeline.recommend(request)

                samples[name].append(await _cpu_per_call_us(recommend, ranked))
        result: dict[str, Any] = {"requests": len(ranked), "rounds": rounds, "stores": {}}
        cpu_none = statistics.median(cpu for cpu, _ in samples["none"])
        for name, values in samples.items():
            cpu = statistics.median(c for c, _ in values)
            wall = statistics.median(w for _, w in values)
            result["stores"][name] = {
                "cpu_us": cpu,
                "wall_us": wall,
                "throughput_cost_pct": 100.0 * (1.0 - cpu_none / cpu),
            }
        return result
    finally:
        for pipeline in pipelines.values():
            await pipeline.impressions.close()
        await runtime.close()
        if redis is not None:
            redis[0].kill()
            redis[0].wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m unirank_bench.impressions")
    parser.add_argument("--artifact", type=Path, default=REPO / "build" / "bench-artifact")
    parser.add_argument("--profile", type=Path, default=PROFILES / "cpu-realtime.toml")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.artifact, args.profile, args.requests, args.rounds))
    print(f"{result['requests']} mixed requests, median of {result['rounds']} alternating rounds")
    for name, store in result["stores"].items():
        print(
            f"  impressions.store={name:<7} cpu {store['cpu_us']:7.1f} µs/request   "
            f"wall {store['wall_us']:7.1f} µs/request   "
            f"throughput cost {store['throughput_cost_pct']:+5.1f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
