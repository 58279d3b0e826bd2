"""What a home page costs in one ``RecommendBatch``: rows per second and latency of pages of 1, 5
and 11 rows (one notification row, then category rows, all for one user) against the same rows
sent one call each.

    PYTHONPATH=bench .venv/bin/python -m unirank_bench.page --artifact build/bench-artifact

A real ``unirank serve`` (the profile given, cpu-realtime by default) pinned to one CPU, this
load generator (the UniRank client) to the others; closed loop, ``--callers`` callers (1 and 8 by
default). The rows of a page go to one user, the users rotate; rounds alternate the shapes so
drift in the machine's load falls on all of them alike. The page's target (issue 18): a page of
11 rows costs at most 3x one single-row request.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from unirank.artifact import load_artifact
from unirank.client import AsyncRecommenderClient, Category, Notification, RecommendationRequest
from unirank_bench.servers import PROFILES, REPO, pin_load_generator, serving

PAGE_SIZES = (1, 5, 11)
"""Rows per page: a notification row alone, and with 4 and 10 category rows."""


async def _closed_loop(
    callers: int, seconds: float, call: Callable[[], Awaitable[int]]
) -> tuple[list[float], int]:
    """Latencies of every call and the rows they answered, over ``seconds``."""
    latencies: list[float] = []
    rows = 0
    until = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal rows
        while time.perf_counter() < until:
            started = time.perf_counter()
            answered = await call()  # not `rows += await ...`: that reads rows before awaiting
            latencies.append(time.perf_counter() - started)
            rows += answered

    await asyncio.gather(*(caller() for _ in range(callers)))
    return latencies, rows


async def measure(
    artifact: Path, profile: Path, callers: tuple[int, ...], seconds: float, rounds: int
) -> dict[str, dict[str, dict[str, float]]]:
    """``{callers: {shape: {p50_ms, p99_ms, rows_per_s, calls_per_s}}}``, shapes ``single`` and
    ``page of N``, each the median over ``rounds``."""
    catalog = load_artifact(artifact).catalog
    users = [catalog.users.key(i) for i in range(1, min(len(catalog.users), 500))]
    categories = [catalog.categories.key(i) for i in range(1, min(len(catalog.categories), 11))]
    turn = itertools.count()

    def page(size: int) -> list[RecommendationRequest]:
        user = users[next(turn) % len(users)]
        rows = [RecommendationRequest(task=Notification(), user_id=user)]
        return rows + [
            RecommendationRequest(task=Category(categories[i % len(categories)]), user_id=user)
            for i in range(size - 1)
        ]

    everything = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    server_cpus = pin_load_generator()
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    try:
        async with (
            serving(profile, artifact, cpus=server_cpus) as served,
            AsyncRecommenderClient(served.address, timeout=10, throttle_k=None) as client,
        ):

            async def single() -> int:
                await client.recommend(page(1)[0])
                return 1

            def batch(size: int) -> Callable[[], Awaitable[int]]:
                async def call() -> int:
                    return len(await client.recommend_batch(page(size)))

                return call

            shapes = {"single row": single, **{f"page of {n}": batch(n) for n in PAGE_SIZES}}
            await _closed_loop(8, 1.0, single)  # warm
            for n_callers in callers:
                per = results.setdefault(str(n_callers), {})
                for index in range(rounds):
                    names = list(shapes)
                    for name in names[index % len(names) :] + names[: index % len(names)]:
                        latencies, rows = await _closed_loop(n_callers, seconds, shapes[name])
                        latencies.sort()
                        stats = per.setdefault(name, {"p50_ms": [], "p99_ms": [], "rows_per_s": []})
                        stats["p50_ms"].append(1e3 * latencies[len(latencies) // 2])
                        stats["p99_ms"].append(1e3 * latencies[int(0.99 * (len(latencies) - 1))])
                        stats["rows_per_s"].append(rows / seconds)
    finally:
        if everything is not None:
            os.sched_setaffinity(0, everything)
    return {
        n: {name: {key: statistics.median(v) for key, v in stats.items()} for name, stats in per.items()}
        for n, per in results.items()
    }


def table(result: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Markdown rows: per callers and shape, latency, rows/s and the cost against one row."""
    lines = [
        "| callers | shape | p50 ms | p99 ms | rows/s | p50 / single row's p50 |",
        "|---|---|---|---|---|---|",
    ]
    for n, per in result.items():
        base = per["single row"]["p50_ms"]
        for name, stats in per.items():
            lines.append(
                f"| {n} | {name} | {stats['p50_ms']:.2f} | {stats['p99_ms']:.2f} | "
                f"{stats['rows_per_s']:,.0f} | {stats['p50_ms'] / base:.2f}x |"
            )
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unirank_bench.page", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--artifact", type=Path, default=REPO / "build" / "bench-artifact")
    parser.add_argument("--profile", type=Path, default=PROFILES / "cpu-realtime.toml")
    parser.add_argument("--callers", default="1,8", help="comma-separated closed-loop caller counts")
    parser.add_argument("--seconds", type=float, default=3.0, help="per shape and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench-page.md")
    args = parser.parse_args(argv)
    callers = tuple(int(n) for n in args.callers.split(","))
    result = asyncio.run(measure(args.artifact, args.profile, callers, args.seconds, args.rounds))
    lines = table(result)
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"page: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
