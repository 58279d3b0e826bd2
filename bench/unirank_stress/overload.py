"""Section 2 of the stress report, overload: the unloaded p99 and capacity of a real
``unirank serve``, then 4x that capacity offered open-loop through the UniRank client (throttling
and naive, long and short deadlines, shipped and bounded limits); what a refusal costs the server;
and calls that never send their message."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from unirank_bench import procstats
from unirank_bench.loadgen import Load, Outcome, closed_loop, scheduled
from unirank_bench.servers import pin_load_generator, serving

from tests.conftest import PROFILES, TASK_NAMES, profile_with
from unirank.artifact import load_artifact
from unirank.client import DEFAULT_THROTTLE_K, AdaptiveConcurrencyLimit, AsyncRecommenderClient, UniRankError
from unirank.server.app import UniRankServer
from unirank.server.config import load_profile
from unirank.server.profile_io import derive_profile, write_profile
from unirank_stress.common import health, load_average, md_table, ms, pct

_ADMISSION_KEYS = ("max_concurrent_rpcs", "max_queued_rpcs", "max_queue_wait_ms", "max_pending_rpcs")


def _profile_file(workdir: Path, name: str, server: dict[str, int] | None) -> Path:
    """cpu-realtime as shipped, or with some ``[server]`` keys replaced."""
    profile = load_profile(PROFILES / "cpu-realtime.toml")
    return write_profile(derive_profile(profile, {"server": server or {}}), workdir / f"{name}.toml")


async def _client_call(client: AsyncRecommenderClient, item: str, timeout: float) -> Outcome:
    """One related-items call through the UniRank client, as an :class:`Outcome`."""
    started = time.monotonic()
    try:
        ranking = await client.related_items(item, timeout=timeout)
    except UniRankError as error:
        return Outcome(
            started, time.monotonic(), error.code, error.reason, error.retry_after_s, message=error.message
        )
    return Outcome(started, time.monotonic(), "OK", fallback=ranking.fallback)


async def _closed_loop(address: str, item: str, callers: int, seconds: float) -> list[Outcome]:
    """``callers`` UniRank clients' worth of back-to-back calls (one channel, throttling off)."""
    outcomes: list[Outcome] = []
    until = time.monotonic() + seconds
    async with AsyncRecommenderClient(address, timeout=10, throttle_k=None) as client:

        async def send(caller: int) -> tuple[Outcome, bytes]:
            return await _client_call(client, item, 10.0), b""

        await closed_loop(
            send,
            callers,
            lambda outcome, _: outcomes.append(outcome),
            lambda: time.monotonic() < until,
            max_retry_wait_s=0,
        )
    return outcomes


@dataclass
class ClientRun:
    """One open-loop run through the UniRank client against a fresh server."""

    label: str
    throttle_k: float | None
    deadline_s: float
    offered_rps: float
    window_s: float
    outcomes: list[Outcome]
    rejected_locally: int
    rss_before_kib: int
    rss_after_kib: int
    rss_peak_kib: int
    health_after: str

    @property
    def answered(self) -> list[float]:
        return [o.latency_s for o in self.outcomes if o.code == "OK"]

    def refused(self) -> Counter[str]:
        return Counter(f"{o.code} ({o.reason or 'no reason'})" for o in self.outcomes if o.code != "OK")


async def _client_open_loop(
    address: str,
    item: str,
    rate: float,
    seconds: float,
    throttle_k: float | None,
    deadline_s: float,
    limit: AdaptiveConcurrencyLimit | None,
) -> tuple[list[Outcome], float, int]:
    """Calls leave at ``rate`` whatever the answers do, through one UniRank client; the outcomes,
    the rate achieved and the calls the client refused itself (its throttle and its limit)."""
    outcomes: list[Outcome] = []
    total = int(rate * seconds)
    async with AsyncRecommenderClient(
        address, timeout=deadline_s, throttle_k=throttle_k, concurrency_limit=limit
    ) as client:

        async def one(index: int, when: float) -> None:
            outcomes.append(await _client_call(client, item, deadline_s))

        begin = time.monotonic()
        _, _, sent_s = await scheduled(rate, begin, lambda index, when: index >= total, one)
        local = client.throttle.rejected_locally if client.throttle is not None else 0
        local += limit.rejected_locally if limit is not None else 0
    return outcomes, total / (sent_s - begin), local


def _refusal_cost_server(artifact: Path, mode: str, ports: Any) -> None:
    """A server process for :func:`refusal_cost`: every call answered (``answered``), refused by
    UniRank's admission (``admission``), or refused by gRPC's own concurrent-RPC limit (``grpc``:
    one open call takes its only place)."""

    async def run() -> None:
        relaxed = {name: {"timeout_ms": 10_000} for name in TASK_NAMES}
        server_keys: dict[str, Any] = {}
        if mode == "grpc":
            server_keys = {"max_open_rpcs": 1, "connections": {"first_message_timeout_ms": 600_000}}
        profile = profile_with(tasks=relaxed, server=server_keys)
        server = UniRankServer(profile, artifact, host="127.0.0.1", port=0)
        await server.start()
        if mode == "admission":  # no slot and no place in line: every call takes the immediate refusal
            server.admission.max_in_flight = server.admission.max_queued = 0
        ports.put(server.port)
        await asyncio.Event().wait()

    asyncio.run(run())


async def _hold_one_call(address: str) -> None:
    """Open a call and never send its message (it holds the only place gRPC allows)."""

    async def never() -> Any:
        await asyncio.Event().wait()
        yield b""

    async with grpc.aio.insecure_channel(address) as channel:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await channel.stream_unary("/unirank.v1.RecommenderService/Recommend")(never(), timeout=600)


async def refusal_cost(artifact: Path, requests: int, server_cpus: set[int] | None) -> dict[str, float]:
    """Server CPU microseconds per answered Recommend, per refusal by UniRank's admission and per
    refusal by gRPC's maximum_concurrent_rpcs (16 closed-loop callers, raw bytes)."""
    item = load_artifact(artifact).catalog.items.key(1)
    spawn = multiprocessing.get_context("spawn")
    cost: dict[str, float] = {}
    for mode in ("answered", "admission", "grpc"):
        ports = spawn.Queue()
        process = spawn.Process(target=_refusal_cost_server, args=(artifact, mode, ports))
        process.start()
        holder = None
        try:
            port = await asyncio.to_thread(ports.get, True, 120)
            assert process.pid is not None
            if server_cpus:
                os.sched_setaffinity(process.pid, server_cpus)
            address = f"127.0.0.1:{port}"
            if mode == "grpc":
                holder = asyncio.create_task(_hold_one_call(address))
                await asyncio.sleep(0.5)
            await Load(address, item, callers=8).run_count(200)
            before = procstats.cpu_seconds(process.pid)
            load = Load(address, item, callers=16)
            await load.run_count(requests)
            cost[mode] = 1e6 * (procstats.cpu_seconds(process.pid) - before) / len(load.outcomes)
            codes = Counter(o.code for o in load.outcomes)
            print(f"stress: refusal cost {mode}: {cost[mode]:.0f} us/call {dict(codes)}", flush=True)
        finally:
            if holder is not None:
                holder.cancel()
            process.terminate()
            process.join()
    return cost


async def _stall_one(channel: grpc.aio.Channel) -> str:
    """A Recommend call that never sends its message; the code it ended with."""

    async def never() -> Any:
        await asyncio.Event().wait()
        yield b""

    try:
        await channel.stream_unary("/unirank.v1.RecommenderService/Recommend")(never(), timeout=60)
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name}" + (" (first message timeout)" if "first_message" in str(error) else "")
    return "OK"


async def stalled_calls(artifact: Path, server_cpus: set[int] | None, calls: int) -> list[str]:
    """``calls`` calls that never send their message, against ``unirank serve`` as shipped."""
    async with serving(PROFILES / "cpu-realtime.toml", artifact, cpus=server_cpus) as served:
        rss_before = served.rss_kib()
        channels = [grpc.aio.insecure_channel(served.address) for _ in range(max(1, calls // 500))]
        started = time.perf_counter()
        ended = await asyncio.gather(*(_stall_one(channels[i % len(channels)]) for i in range(calls)))
        elapsed = time.perf_counter() - started
        rss_peak, rss_after = served.peak_rss_kib(), served.rss_kib()
        for channel in channels:
            await channel.close()
        health_after = await health(served.address)
    codes = Counter(ended)
    print(f"stress: {calls} stalled calls: {dict(codes)} in {elapsed:.1f} s", flush=True)
    timeout_ms = load_profile(PROFILES / "cpu-realtime.toml").server.connections.first_message_timeout_ms
    return [
        f"**Stalled calls** (finding 6): {calls:,} Recommend calls opened over {len(channels)} connections "
        "that never send their message (the client's own deadline: 60 s), against `unirank serve` "
        f"(cpu-realtime, `first_message_timeout_ms = {timeout_ms}`): "
        f"{'; '.join(f'{code}: {n:,}' for code, n in codes.most_common())} (DEADLINE_EXCEEDED: ended "
        "by the first-message timeout; CANCELLED: dropped by gRPC core while its backlog of calls "
        "not yet taken up was full; UNAVAILABLE: streams gRPC core refused with REFUSED_STREAM), "
        f"all of them within {elapsed:.1f} s of the first being opened; "
        f"server RSS {rss_before >> 10} MiB before, peak {rss_peak >> 10}, {rss_after >> 10} after; "
        f"health {health_after}.",
        "",
    ]


async def _client_run(
    setup: _Setup,
    label: str,
    throttle_k: float | None,
    deadline_s: float,
    server: dict[str, Any] | None,
    limit: dict[str, float] | None,
) -> ClientRun:
    profile = _profile_file(setup.workdir, re.sub(r"\W+", "-", label), server)
    async with serving(profile, setup.artifact, cpus=setup.server_cpus) as served:
        await _closed_loop(served.address, setup.item, callers=8, seconds=1.0)  # warm
        rss_before = served.rss_kib()
        outcomes, offered, local = await _client_open_loop(
            served.address,
            setup.item,
            setup.rate,
            setup.overload_s,
            throttle_k,
            deadline_s,
            None if limit is None else AdaptiveConcurrencyLimit(**limit),  # type: ignore[arg-type]
        )
        rss_after, rss_peak = served.rss_kib(), served.peak_rss_kib()
        health_after = await health(served.address)
    run = ClientRun(
        label,
        throttle_k,
        deadline_s,
        offered,
        setup.overload_s,
        outcomes,
        local,
        rss_before,
        rss_after,
        rss_peak,
        health_after,
    )
    print(f"stress: overload ({label}): OK {len(run.answered)}, {dict(run.refused())}", flush=True)
    return run


_BOUNDED = {"max_concurrent_rpcs": 8, "max_queued_rpcs": 0, "max_pending_rpcs": 16}
"""A latency-first [server]: 8 calls in flight, none in line, a gRPC backlog of 16."""
_BOUNDED_LABEL = "server: 8 in flight, none in line, gRPC backlog 16"

_LIMITED = "throttling client (K = 2) with its adaptive concurrency limit"

OVERLOAD_ROWS: tuple[tuple[str, float | None, float, dict[str, Any] | None, dict[str, float] | None], ...] = (
    ("throttling client (default K = 2), 1 s deadline", DEFAULT_THROTTLE_K, 1.0, None, None),
    ("throttling client (K = 1.1), 1 s deadline", 1.1, 1.0, None, None),
    ("naive client (no throttling), 1 s deadline", None, 1.0, None, None),
    ("throttling client (K = 2), 50 ms deadline", DEFAULT_THROTTLE_K, 0.05, None, None),
    ("naive client, 50 ms deadline", None, 0.05, None, None),
    (f"throttling client (K = 2), 1 s deadline; {_BOUNDED_LABEL}", DEFAULT_THROTTLE_K, 1.0, _BOUNDED, None),
    (f"naive client, 1 s deadline; {_BOUNDED_LABEL}", None, 1.0, _BOUNDED, None),
    (
        "throttling client (K = 2), 1 s deadline; server: gRPC's limit in front (max_open_rpcs = 72)",
        DEFAULT_THROTTLE_K,
        1.0,
        {"max_open_rpcs": 72},
        None,
    ),
    (f"{_LIMITED} (default: alpha 1, beta 3), 1 s deadline", DEFAULT_THROTTLE_K, 1.0, None, {}),
    (f"{_LIMITED} (default: alpha 1, beta 3), 50 ms deadline", DEFAULT_THROTTLE_K, 0.05, None, {}),
    (f"{_LIMITED} (alpha 2, beta 4), 1 s deadline", DEFAULT_THROTTLE_K, 1.0, None, {"alpha": 2, "beta": 4}),
)
"""Rows of the overload table: label, the client's throttle K (None: none), its deadline, the
``[server]`` keys replaced in cpu-realtime (None: as shipped), and the knobs of the client's
adaptive concurrency limit (``AdaptiveConcurrencyLimit``; None: no limit, {}: its defaults)."""


@dataclass(frozen=True)
class _Setup:
    workdir: Path
    artifact: Path
    item: str
    server_cpus: set[int] | None
    rate: float
    overload_s: float


async def overload(artifact: Path, workdir: Path, quick: bool) -> list[str]:
    item = load_artifact(artifact).catalog.items.key(1)
    unloaded_s, capacity_s, overload_s = (1.0, 2.0, 3.0) if quick else (3.0, 5.0, 10.0)
    everything = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    load_before = load_average()
    server_cpus = pin_load_generator()
    try:
        cost = await refusal_cost(artifact, 1000 if quick else 4000, server_cpus)
        shipped = _profile_file(workdir, "measure", None)
        async with serving(shipped, artifact, cpus=server_cpus) as served:
            await _closed_loop(served.address, item, callers=8, seconds=1.0)  # warm
            base = [o.latency_s for o in await _closed_loop(served.address, item, 1, unloaded_s)]
            # Capacity with requests sent as bytes: the UniRank client on one core would measure
            # its own limit rather than the server's.
            measure = Load(served.address, item, callers=32)
            started = time.perf_counter()
            await measure.run(capacity_s)
            capacity = sum(o.code == "OK" for o in measure.outcomes) / (time.perf_counter() - started)
        p50, p99 = pct(base, 50), pct(base, 99)
        print(f"stress: capacity {capacity:.0f}/s, unloaded p50 {ms(p50)} p99 {ms(p99)}", flush=True)
        setup = _Setup(workdir, artifact, item, server_cpus, 4 * capacity, overload_s)
        runs = [
            await _client_run(setup, label, throttle_k, deadline_s, server, limit)
            for label, throttle_k, deadline_s, server, limit in OVERLOAD_ROWS
        ]
    finally:
        if everything is not None:
            os.sched_setaffinity(0, everything)
    load_after = load_average()
    stalled = await stalled_calls(artifact, server_cpus, 2000 if quick else 10_000)
    rows = []
    for run in runs:
        n = len(run.outcomes)
        ok = run.answered
        ratio = pct(ok, 99) / p99 if ok else float("nan")
        rows.append(
            [
                run.label,
                f"{run.offered_rps:.0f}/s ({n:,})",
                f"**{len(ok) / run.window_s:.0f}/s** ({len(ok) / run.window_s / capacity:.0%} of capacity)",
                f"{run.rejected_locally:,}",
                "; ".join(f"{code}: {count:,}" for code, count in run.refused().most_common()) or "none",
                f"{ms(pct(ok, 50))} / {ms(pct(ok, 99))} (**{ratio:.1f}x**)",
                f"{run.rss_before_kib >> 10} → {run.rss_after_kib >> 10} (peak {run.rss_peak_kib >> 10})",
                run.health_after,
            ]
        )
    pinning = (
        f"`unirank serve` pinned to CPU {min(server_cpus)} and the load generator to the other "
        f"{len(everything or ()) - 1} (neither takes the other's core; other processes still may)"
        if server_cpus
        else "sharing all CPUs (affinity not available)"
    )
    limits = load_profile(PROFILES / "cpu-realtime.toml").server
    return [
        "## 2. Overload",
        "",
        f"A real `unirank serve` (cpu-realtime as shipped: {limits.max_concurrent_rpcs} calls in flight, "
        f"{limits.max_queued_rpcs} in line for at most {limits.max_queue_wait_ms} ms, gRPC backlog "
        f"{limits.max_pending_rpcs}, max_open_rpcs {limits.max_open_rpcs}), {pinning}; machine load "
        f"average before / after this section: {load_before} / {load_after}. The load generator is the "
        "UniRank client (`AsyncRecommenderClient`, one channel) asking for related items. "
        f"**Unloaded** (1 caller, {unloaded_s:.0f} s): p50 {ms(p50)}, p99 {ms(p99)}. **Capacity** "
        f"(32 closed-loop callers sending serialized requests, {capacity_s:.0f} s): "
        f"**{capacity:.0f} answers/s**. Then **4x capacity "
        f"= {4 * capacity:.0f} calls/s** offered open-loop for {overload_s:.0f} s (calls leave on schedule "
        "whatever the answers do) against a fresh server per row; latency is the client's, call to answer.",
        "",
        *md_table(
            [
                "client",
                "offered (calls)",
                "answered",
                "refused by the client itself (THROTTLED_LOCALLY: throttle and limit)",
                "refused by the server, by code (reason)",
                "answered p50 / p99 (p99 / unloaded p99)",
                "server RSS MiB before → after (peak)",
                "health after",
            ],
            rows,
        ),
        "Server CPU per call (`refusal_cost`: 16 closed-loop callers sending serialized bytes, the "
        f"server's own CPU time from /proc, pinned like above): **{cost['answered']:.0f} µs per answer, "
        f"{cost['admission']:.0f} µs per refusal by UniRank's admission** (the cached shed handler: "
        "RESOURCE_EXHAUSTED + RetryInfo) and **"
        f"{cost['grpc']:.0f} µs per refusal by gRPC's own `maximum_concurrent_rpcs`** (`[server] "
        "max_open_rpcs`; RESOURCE_EXHAUSTED, no RetryInfo, no UniRank code runs).",
        "",
        *stalled,
    ]
