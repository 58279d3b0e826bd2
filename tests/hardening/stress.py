"""``make stress``: the long hardening runs, written up as docs/reliability.md.

1. The fuzz test at full size (``--fuzz-examples`` per strategy: 2,500 gives 13,000 RPCs) and every
   input limit probed by name.
2. Overload: unloaded p99 and capacity of a real ``unirank serve``, then 4x that capacity offered
   open-loop, with the shipped limits and with limits sized from the measurement.
3. SIGTERM under load: a real ``unirank serve`` drained mid-load.
4. Every fault and attack the hardening tests drive, tried again and written down with what was
   observed.

    .venv/bin/python -m tests.hardening.stress [--artifact DIR] [--out docs/reliability.md] [--quick]

The load generator shares the machine's cores with the server; the report says how many and how
busy the machine was, so compare ratios within one report rather than numbers across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from unirank.artifact import ArtifactError, ModelInputs, load_artifact
from unirank.artifact.store import init_repository
from unirank.client import DEFAULT_THROTTLE_K, AsyncRecommenderClient, UniRankError
from unirank.server.app import UniRankServer
from unirank.server.backends.base import BackendError
from unirank.server.config import load_profile
from unirank.server.profile_io import derive_profile, write_profile
from unirank.server.security import SecurityError

from ..conftest import PROFILES, TASK_NAMES, profile_with, running_server
from .certs import Pki, make_pki
from .serve import Load, Outcome, run_serve, serving, sigterm_under_load
from .test_faults import DAMAGES, damage
from .test_limits import CASES, LIMITS, _request

REPO = Path(__file__).resolve().parents[2]
TASKS = TASK_NAMES


# -- helpers ---------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


async def _error_of(call: Callable[[], Any]) -> str:
    """``CODE (REASON): message`` of a call that should fail, or ``OK``."""
    try:
        await call()
    except UniRankError as error:
        reason = f" ({error.reason})" if error.reason else ""
        return f"{error.code}{reason}: {error.message[:90]}"
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name}: {(error.details() or '')[:90]}"
    return "OK"


def ensure_artifact(path: Path | None) -> Path:
    if path is not None:
        return path
    target = REPO / "build" / "stress-artifact"
    if not (target / "manifest.json").is_file():
        from unirank.training.pipeline import TrainConfig, train_artifact

        print(f"stress: training a tiny artifact into {target}", flush=True)
        train_artifact(TrainConfig.tiny(seed=0), target)
    return target


# -- 1. input ---------------------------------------------------------------------------------


def run_fuzz(artifact: Path, examples: int, workdir: Path) -> list[str]:
    tally_path = workdir / "fuzz.json"
    env = {
        **os.environ,
        "UNIRANK_TEST_ARTIFACT": str(artifact),
        "UNIRANK_FUZZ_EXAMPLES": str(examples),
        "UNIRANK_FUZZ_REPORT": str(tally_path),
    }
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=3600"]
    result = subprocess.run(
        [*command, "tests/hardening/test_fuzz.py"], cwd=REPO, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"stress: fuzz {summary} in {elapsed:.0f} s", flush=True)
    counts: dict[str, int] = json.loads(tally_path.read_text()) if tally_path.is_file() else {}
    strategies = sorted({key.split("|")[0] for key in counts})
    codes = sorted({key.split("|")[1] for key in counts} - {"requests", "OK"})
    codes = [c for c in codes if not c.startswith(("field ", "OK "))]
    rows = []
    for strategy in strategies:
        row: list[object] = [f"`{strategy}`", counts.get(f"{strategy}|requests", 0)]
        row.append(counts.get(f"{strategy}|OK", 0))
        rankings = counts.get(f"{strategy}|OK rankings", 0)
        by_fallback = counts.get(f"{strategy}|OK rankings by fallback", 0)
        row.append(f"{rankings} ({by_fallback})" if rankings else "")
        row += [counts.get(f"{strategy}|{code}", 0) for code in codes]
        rows.append(row)
    total = sum(counts.get(f"{s}|requests", 0) for s in strategies)
    bad = sum(counts.get(f"{s}|{c}", 0) for s in strategies for c in ("INTERNAL", "UNKNOWN"))
    violations: Counter[str] = Counter()
    for key, value in counts.items():
        strategy, _, what = key.partition("|")
        if what.startswith("field "):
            violations[re.sub(r"^requests\[i\]\.", "", what[len("field ") :])] += value
    lines = [
        "## 1. Bad input",
        "",
        f"**Fuzz**: `tests/hardening/test_fuzz.py` with `UNIRANK_FUZZ_EXAMPLES={examples}` against one real "
        f"server (cpu-realtime, relaxed timeouts): **{total:,} RPCs** in {elapsed:.0f} s; pytest says "
        f"`{summary}`. INTERNAL or UNKNOWN answers: **{bad}**. Every error carried a message and every "
        "INVALID_ARGUMENT a BadRequest whose violations each name a field and say why; every ranking had "
        "unique items, no NaN score and none of the excluded items; health answered SERVING afterwards "
        "(the test fails otherwise).",
        "",
        "Strategies: `structured` (half well-formed requests, half adversarial values: control and "
        "format characters, unpaired-looking unicode, 300-character strings, negative or huge numbers, "
        "no use-case, lists at and past the limits up to 20,000 ids, a 10,000-character query), `batch` "
        "(0 to 70 such requests in one RecommendBatch; the limit is 64), `damaged/*` (a valid request's "
        "bytes truncated, bit-flipped, with invalid UTF-8 in a string field, an unknown field, a wrong "
        "wire type, a length prefix of up to 4 GiB, or 50 to 2,000 nested groups), `garbage/*` (random "
        "bytes to three methods).",
        "",
        *_table(["strategy", "RPCs", "OK", "rankings (by fallback)", *codes], rows),
        "Violations reported (BadRequest field: description, numbers blanked), over all strategies:",
        "",
        *_table(["field violation", "count"], [[f"`{k}`", v] for k, v in sorted(violations.items())]),
    ]
    if result.returncode != 0:
        lines += ["**The fuzz run failed:**", "", "```", result.stdout[-3000:], "```", ""]
    return lines


async def probe_limits(artifact: Path) -> list[str]:
    profile = profile_with(server=LIMITS, tasks={name: {"timeout_ms": 10_000} for name in TASKS})
    rows = []
    async with (
        running_server(profile, artifact) as server,
        AsyncRecommenderClient(server.address, timeout=10) as client,
    ):
        for case, request, field, _ in CASES:
            try:
                await client.recommend(request)
                rows.append([case, f"`{field}`", "OK (not refused!)", ""])
            except UniRankError as error:
                described = dict(error.field_violations)
                rows.append([case, f"`{field}`", error.code, described.get(field, error.message)])
        huge = _request(context__device="x" * (3 * LIMITS["max_message_bytes"]))
        outcome = await _error_of(lambda: client.recommend(huge))
        code, _, detail = outcome.partition(":")
        rows.append(["message at 3x the limit", "(transport)", code, detail.strip()])
    limits = ", ".join(f"`{k} = {v}`" for k, v in LIMITS.items())
    return [
        "**Each limit by name** (a server with `[server]` " + limits + "; the id, query and short-field "
        "limits are fixed by the codec: ids ≤ 128 characters without whitespace or control characters, "
        "queries ≤ 512 characters without control characters other than tab and newline, country / "
        "language / device ≤ 64 characters; `max_results` ≤ the use-case's `max_results_limit`):",
        "",
        *_table(["input", "field", "observed", "description"], rows),
        "A request over `max_message_bytes` but within twice it is read and refused by the interceptor "
        "with INVALID_ARGUMENT naming the limit; past twice the limit gRPC itself cuts it off unread "
        "with RESOURCE_EXHAUSTED and no RetryInfo, so a client cannot mistake it for overload.",
        "",
    ]


# -- 2. overload ------------------------------------------------------------------------------


_ADMISSION_KEYS = ("max_concurrent_rpcs", "max_queued_rpcs", "max_queue_wait_ms", "max_pending_rpcs")


def _profile_file(workdir: Path, name: str, server: dict[str, int] | None) -> Path:
    """cpu-realtime as shipped, or with some ``[server]`` keys replaced."""
    profile = load_profile(PROFILES / "cpu-realtime.toml")
    return write_profile(derive_profile(profile, {"server": server or {}}), workdir / f"{name}.toml")


async def _health(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


async def _client_call(client: AsyncRecommenderClient, item: str, timeout: float) -> Outcome:
    """One related-items call through the UniRank client, as an :class:`Outcome`."""
    started = time.perf_counter()
    try:
        ranking = await client.related_items(item, timeout=timeout)
    except UniRankError as error:
        return Outcome(
            started, time.perf_counter(), error.code, error.reason, error.retry_after_s, message=error.message
        )
    return Outcome(started, time.perf_counter(), "OK", fallback=ranking.fallback)


async def _closed_loop(address: str, item: str, callers: int, seconds: float) -> list[Outcome]:
    """``callers`` UniRank clients' worth of back-to-back calls (one channel, throttling off)."""
    outcomes: list[Outcome] = []
    until = time.perf_counter() + seconds
    async with AsyncRecommenderClient(address, timeout=10, throttle_k=None) as client:

        async def caller() -> None:
            while time.perf_counter() < until:
                outcomes.append(await _client_call(client, item, 10.0))

        await asyncio.gather(*(caller() for _ in range(callers)))
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
    address: str, item: str, rate: float, seconds: float, throttle_k: float | None, deadline_s: float
) -> tuple[list[Outcome], float, int]:
    """Calls leave at ``rate`` whatever the answers do, through one UniRank client; the outcomes,
    the rate achieved and the calls the client's throttle refused itself."""
    outcomes: list[Outcome] = []
    async with AsyncRecommenderClient(address, timeout=deadline_s, throttle_k=throttle_k) as client:

        async def one() -> None:
            outcomes.append(await _client_call(client, item, deadline_s))

        pending: set[asyncio.Task[None]] = set()
        total = int(rate * seconds)
        begin = time.perf_counter()
        for index in range(total):
            delay = begin + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
        sent_s = time.perf_counter() - begin
        await asyncio.gather(*pending)
        local = client.throttle.rejected_locally if client.throttle is not None else 0
    return outcomes, total / sent_s, local


def _pin_load_generator() -> set[int] | None:
    """The server gets CPU 0, this process (the load generator) the others: one cannot take the
    other's core. None where there is only one CPU or affinity is not supported."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if len(cpus) < 2:
        return None
    server = {min(cpus)}
    os.sched_setaffinity(0, cpus - server)
    return server


def _refusal_cost_server(artifact: Path, mode: str, ports: Any) -> None:
    """A server process for :func:`refusal_cost`: every call answered (``answered``), refused by
    UniRank's admission (``admission``), or refused by gRPC's own concurrent-RPC limit (``grpc``:
    one open call takes its only place)."""

    async def run() -> None:
        relaxed = {name: {"timeout_ms": 10_000} for name in TASKS}
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


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
            before = _process_cpu_s(process.pid)
            load = Load(address, item, callers=16)
            await load.run_count(requests)
            cost[mode] = 1e6 * (_process_cpu_s(process.pid) - before) / len(load.outcomes)
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
        health = await _health(served.address)
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
        f"health {health}.",
        "",
    ]


async def _client_run(
    setup: _Setup, label: str, throttle_k: float | None, deadline_s: float, server: dict[str, Any] | None
) -> ClientRun:
    profile = _profile_file(setup.workdir, re.sub(r"\W+", "-", label), server)
    async with serving(profile, setup.artifact, cpus=setup.server_cpus) as served:
        await _closed_loop(served.address, setup.item, callers=8, seconds=1.0)  # warm
        rss_before = served.rss_kib()
        outcomes, offered, local = await _client_open_loop(
            served.address, setup.item, setup.rate, setup.overload_s, throttle_k, deadline_s
        )
        rss_after, rss_peak = served.rss_kib(), served.peak_rss_kib()
        health = await _health(served.address)
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
        health,
    )
    print(f"stress: overload ({label}): OK {len(run.answered)}, {dict(run.refused())}", flush=True)
    return run


_BOUNDED = {"max_concurrent_rpcs": 8, "max_queued_rpcs": 0, "max_pending_rpcs": 16}
"""A latency-first [server]: 8 calls in flight, none in line, a gRPC backlog of 16."""
_BOUNDED_LABEL = "server: 8 in flight, none in line, gRPC backlog 16"

OVERLOAD_ROWS: tuple[tuple[str, float | None, float, dict[str, Any] | None], ...] = (
    ("throttling client (default K = 2), 1 s deadline", DEFAULT_THROTTLE_K, 1.0, None),
    ("throttling client (K = 1.1), 1 s deadline", 1.1, 1.0, None),
    ("naive client (no throttling), 1 s deadline", None, 1.0, None),
    ("throttling client (K = 2), 50 ms deadline", DEFAULT_THROTTLE_K, 0.05, None),
    ("naive client, 50 ms deadline", None, 0.05, None),
    (f"throttling client (K = 2), 1 s deadline; {_BOUNDED_LABEL}", DEFAULT_THROTTLE_K, 1.0, _BOUNDED),
    (f"throttling client (K = 1.1), 1 s deadline; {_BOUNDED_LABEL}", 1.1, 1.0, _BOUNDED),
    (f"naive client, 1 s deadline; {_BOUNDED_LABEL}", None, 1.0, _BOUNDED),
    (f"throttling client (K = 2), 50 ms deadline; {_BOUNDED_LABEL}", DEFAULT_THROTTLE_K, 0.05, _BOUNDED),
    (
        "throttling client (K = 2), 1 s deadline; server: gRPC's limit in front (max_open_rpcs = 72)",
        DEFAULT_THROTTLE_K,
        1.0,
        {"max_open_rpcs": 72},
    ),
)
"""Rows of the overload table: label, the client's throttle K (None: none), its deadline, and the
``[server]`` keys replaced in cpu-realtime (None: as shipped)."""


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
    load_before = _load_average()
    server_cpus = _pin_load_generator()
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
        p50, p99 = _pct(base, 50), _pct(base, 99)
        print(f"stress: capacity {capacity:.0f}/s, unloaded p50 {_ms(p50)} p99 {_ms(p99)}", flush=True)
        setup = _Setup(workdir, artifact, item, server_cpus, 4 * capacity, overload_s)
        runs = [
            await _client_run(setup, label, throttle_k, deadline_s, server)
            for label, throttle_k, deadline_s, server in OVERLOAD_ROWS
        ]
    finally:
        if everything is not None:
            os.sched_setaffinity(0, everything)
    load_after = _load_average()
    stalled = await stalled_calls(artifact, server_cpus, 2000 if quick else 10_000)
    rows = []
    for run in runs:
        n = len(run.outcomes)
        ok = run.answered
        ratio = _pct(ok, 99) / p99 if ok else float("nan")
        rows.append(
            [
                run.label,
                f"{run.offered_rps:.0f}/s ({n:,})",
                f"**{len(ok) / run.window_s:.0f}/s** ({len(ok) / run.window_s / capacity:.0%} of capacity)",
                f"{run.rejected_locally:,}",
                "; ".join(f"{code}: {count:,}" for code, count in run.refused().most_common()) or "none",
                f"{_ms(_pct(ok, 50))} / {_ms(_pct(ok, 99))} (**{ratio:.1f}x**)",
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
        f"**Unloaded** (1 caller, {unloaded_s:.0f} s): p50 {_ms(p50)}, p99 {_ms(p99)}. **Capacity** "
        f"(32 closed-loop callers sending serialized requests, {capacity_s:.0f} s): "
        f"**{capacity:.0f} answers/s**. Then **4x capacity "
        f"= {4 * capacity:.0f} calls/s** offered open-loop for {overload_s:.0f} s (calls leave on schedule "
        "whatever the answers do) against a fresh server per row; latency is the client's, call to answer.",
        "",
        *_table(
            [
                "client",
                "offered (calls)",
                "answered",
                "refused by the client itself (THROTTLED_LOCALLY)",
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


# -- 3. SIGTERM -------------------------------------------------------------------------------


async def sigterm(artifact: Path, quick: bool) -> list[str]:
    item = load_artifact(artifact).catalog.items.key(1)
    callers, warm_s = (16, 1.0) if quick else (64, 3.0)
    async with serving(PROFILES / "cpu-realtime.toml", artifact) as served:
        report = await sigterm_under_load(served, item, callers=callers, warm_s=warm_s)
    failed = Counter(f"{o.code} {o.reason}".strip() for o in report.failed)
    print(f"stress: SIGTERM {report}", flush=True)
    limits = load_profile(PROFILES / "cpu-realtime.toml").server
    return [
        "## 3. SIGTERM under load",
        "",
        f"A real `unirank serve` (cpu-realtime) under {callers} closed-loop callers for {warm_s:.0f} s, then "
        "SIGTERM. Each caller stops at its first UNAVAILABLE (a real client fails over then) and waits "
        f"as RetryInfo asks after a RESOURCE_EXHAUSTED (cpu-realtime admits {limits.max_concurrent_rpcs} "
        f"calls at a time and lets {limits.max_queued_rpcs} more wait at most "
        f"{limits.max_queue_wait_ms:g} ms; callers past that are refused by design).",
        "",
        *_table(
            [
                "requests",
                "outstanding at the signal",
                "sent before, answered OK after",
                "refused DRAINING (RetryInfo)",
                "refused OVERLOADED before the signal (RetryInfo)",
                "port already closed",
                "**failed**",
                "exit code",
                "signal to exit",
            ],
            [
                [
                    f"{report.requests:,}",
                    report.in_flight_at_signal,
                    report.finished_after_signal,
                    report.refused_draining,
                    report.refused_overloaded,
                    report.refused_closed,
                    f"**{len(report.failed)}** {dict(failed) or ''}",
                    report.exit_code,
                    f"{report.drain_s:.2f} s",
                ]
            ],
        ),
        "Every request the server had admitted when the signal came finished with its ranking. "
        "Requests still waiting to be admitted when draining began (queued behind the others on the "
        "event loop) were refused with UNAVAILABLE, reason DRAINING and RetryInfo before any work was "
        "done, which a client retries on another replica; health said NOT_SERVING from the signal on. "
        "A failure is any other outcome (an admitted request cut off, CANCELLED, INTERNAL, ...).",
        "",
    ]


# -- 4. faults --------------------------------------------------------------------------------


class _Faulty:
    name, device, inline = "faulty", "cpu", False

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner, self.mode = inner, mode

    async def score(self, inputs: ModelInputs, deadline: float | None = None, *, tag: Hashable = None) -> Any:
        if self.mode == "raise":
            raise BackendError("injected failure")
        await asyncio.sleep(30)

    async def start(self) -> None: ...

    async def close(self) -> None:
        await self.inner.close()


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


async def faults(artifact: Path, workdir: Path) -> list[str]:
    rows: list[list[object]] = []
    profile = profile_with(tasks={"related_items": {"timeout_ms": 60}, "notification": {"timeout_ms": 80}})
    async with (
        running_server(profile, artifact) as server,
        AsyncRecommenderClient(server.address, timeout=10) as client,
    ):
        pipeline = server.pipeline
        assert pipeline is not None
        real = pipeline.runtime.backend
        catalog = pipeline.runtime.artifact.catalog
        for mode, call, budget in (
            ("raise", lambda: client.related_items(catalog.items.key(3)), 60),
            ("hang", lambda: client.notification(catalog.users.key(1)), 80),
        ):
            pipeline.runtime.backend = _Faulty(real, mode)  # type: ignore[assignment]
            started = time.perf_counter()
            ranking = await call()
            elapsed = time.perf_counter() - started
            pipeline.runtime.backend = real
            rows.append(
                [
                    f"backend {'raises' if mode == 'raise' else 'hangs 30 s'}",
                    f"OK, fallback={ranking.fallback}, reason `{ranking.fallback_reason}`, "
                    f"{len(ranking.items)} items",
                    f"answered in {_ms(elapsed)} (use-case timeout {budget} ms)",
                ]
            )

    # A tampered artifact at start: the real command, each damage.
    profile_path = PROFILES / "cpu-realtime.toml"
    for how, (what, _) in DAMAGES.items():
        copy = damage(artifact, workdir / f"start-{how}", how)
        code, output = await run_serve(
            ["--profile", str(profile_path), "--artifact", str(copy), "--port", "0"]
        )
        message = next((line for line in output.splitlines() if "unirank serve" in line), output[-200:])
        rows.append(
            [f"artifact at start: {what}", f"exit code {code}", f"`{message.replace(str(workdir), '…')}`"]
        )

    # A tampered artifact at reload: refused, counted, logged; the old version keeps serving.
    capture = _Capture()
    logging.getLogger("unirank.server.app").addHandler(capture)
    try:
        for how, (what, _) in DAMAGES.items():
            repo = init_repository(workdir / f"repo-{how}")
            shutil.copytree(artifact, repo / "v001")
            async with (
                running_server("cpu-realtime", repo) as server,
                AsyncRecommenderClient(server.address, timeout=10) as client,
            ):
                good = server.pipeline.runtime.version if server.pipeline else "?"
                damage(artifact, repo / "v002", how)
                try:
                    await server.reload()
                    refused = "accepted (!)"
                except ArtifactError:
                    refused = "refused (ArtifactError)"
                served = (await client.model_info()).model_version
                log = next((line for line in capture.lines if "refused artifact" in line), "(no log line)")
                rows.append(
                    [
                        f"artifact at reload: {what}",
                        f"{refused}; still serving {'the old version' if served == good else served}; "
                        f"reload_failures = {server.reload_failures}",
                        f"`{log.replace(str(workdir), '…')[:160]}`",
                    ]
                )
            capture.lines.clear()
    finally:
        logging.getLogger("unirank.server.app").removeHandler(capture)
    return [
        "## 4. Faults",
        "",
        *_table(["fault", "observed", "detail"], rows),
        "Automated tests: `tests/integration/test_error_table.py` (backend raising / hanging, fallback or "
        "the configured error), `tests/integration/test_lifecycle.py` (tampered artifact at reload, "
        "drain), `tests/hardening/test_faults.py` (tampered artifact at start through `unirank serve`, "
        "SIGTERM under load), `tests/server/test_torch_backend.py` (a checkpoint carrying pickled code is "
        "refused by `weights_only=True` and the payload never runs). Checksums of every file are verified "
        "before any file is parsed (`unirank.artifact.store.verify_artifact`). The online feature store "
        "being unavailable (serving degrades to features without fresh history) is covered by "
        "`tests/integration/test_freshness.py` and not repeated here.",
        "",
    ]


# -- 5. attacks -------------------------------------------------------------------------------

_TOKENS = {"search-app": "stress-search-token-71d2c0", "admin": "stress-admin-token-9e44aa"}
_ROTATED_TOKEN = "stress-admin-rotated-4c1d9e"


async def _reflect(address: str, creds: grpc.ChannelCredentials | None, token: str | None) -> str:
    channel = grpc.aio.secure_channel(address, creds) if creds else grpc.aio.insecure_channel(address)
    async with channel:
        metadata = [("authorization", f"Bearer {token}")] if token else []
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            metadata=metadata, timeout=5
        )
        try:
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            await call.done_writing()
            names = [s.name for r in [await call.read()] for s in r.list_services_response.service]
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {(error.details() or '')[:80]}"
    return f"OK: {len(names)} services listed"


async def attacks(artifact: Path, workdir: Path) -> list[str]:
    pki: Pki = make_pki(workdir / "pki")
    ca = pki.ca.cert.read_bytes()
    tokens = workdir / "tokens"
    tokens.write_text("".join(f"{name}:{token}\n" for name, token in _TOKENS.items()))
    relaxed = {name: {"timeout_ms": 10_000} for name in TASKS}
    profile = profile_with(
        tasks=relaxed,
        security={
            "tls_cert_file": str(pki.server.cert),
            "tls_key_file": str(pki.server.key),
            "client_ca_file": str(pki.ca.cert),
            "require_client_cert": True,
            "auth": "bearer",
            "tokens_file": str(tokens),
            "grants": {"search-app": {"methods": ["Recommend"], "tasks": ["search"]}},
        },
    )

    def mtls(pair: Any = None) -> grpc.ChannelCredentials:
        key, chain = (pair or pki.client).read()
        return grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=chain)

    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    rows: list[list[object]] = []
    try:
        async with running_server(profile, artifact) as server:
            address = server.address

            async def attempt(
                label: str, call: Callable[[AsyncRecommenderClient], Any], **client: Any
            ) -> None:
                async with AsyncRecommenderClient(address, timeout=5, **client) as c:
                    rows.append([label, await _error_of(lambda: call(c))])

            search = lambda c: c.search("space")  # noqa: E731
            await attempt("plaintext client to a TLS server", search, bearer_token=_TOKENS["admin"])
            await attempt(
                "client trusting another CA", search, root_certificates=pki.rogue_ca.cert.read_bytes()
            )
            await attempt("mutual TLS: no client certificate", search, root_certificates=ca)
            await attempt(
                "mutual TLS: client certificate of another CA",
                search,
                credentials=mtls(pki.rogue_client),
                bearer_token=_TOKENS["admin"],
            )
            await attempt("no bearer token", search, credentials=mtls())
            await attempt("unknown token", search, credentials=mtls(), bearer_token="guess-guess-guess-guess")
            await attempt(
                "a valid token under the Basic scheme",
                search,
                credentials=mtls(),
                metadata=[("authorization", f"Basic {_TOKENS['admin']}")],
            )
            await attempt(
                "search-only token asks for a category row",
                lambda c: c.category("drama"),
                credentials=mtls(),
                bearer_token=_TOKENS["search-app"],
            )
            await attempt(
                "Recommend-only token asks for GetModelInfo",
                lambda c: c.model_info(),
                credentials=mtls(),
                bearer_token=_TOKENS["search-app"],
            )
            await attempt(
                "search-only token, search", search, credentials=mtls(), bearer_token=_TOKENS["search-app"]
            )
            await attempt("health check without a token (open)", lambda c: c.health(), credentials=mtls())
            rows.append(["reflection without a token", await _reflect(address, mtls(), None)])
            rows.append(["reflection with a token", await _reflect(address, mtls(), _TOKENS["admin"])])
            # Rotation: the tokens file is rewritten with a new admin token and the server told
            # (what SIGHUP does in `unirank serve`).
            rotated = _ROTATED_TOKEN
            tokens.write_text(f"admin:{rotated}\nsearch-app:{_TOKENS['search-app']}\n")
            server.reload_secrets()
            await attempt(
                "old admin token after rotation", search, credentials=mtls(), bearer_token=_TOKENS["admin"]
            )
            await attempt("new admin token after rotation", search, credentials=mtls(), bearer_token=rotated)
            tokens.write_text("admin:too-short\n")
            try:
                server.reload_secrets()
                outcome = "accepted"
            except SecurityError as error:
                outcome = f"refused: {error}"
            await attempt(
                f"rotation to a malformed tokens file ({outcome}); then the rotated token",
                search,
                credentials=mtls(),
                bearer_token=rotated,
            )
            tokens.write_text("".join(f"{name}:{token}\n" for name, token in _TOKENS.items()))
        closed = profile_with(
            tasks=relaxed,
            security={"auth": "bearer", "tokens_file": str(tokens), "health_requires_auth": True},
        )
        async with (
            running_server(closed, artifact) as server,
            AsyncRecommenderClient(server.address, timeout=5) as anonymous,
        ):
            rows.append(
                ["health check without a token (closed by config)", await _error_of(anonymous.health)]
            )
        hidden = profile_with(tasks=relaxed, server={"reflection": False})
        async with running_server(hidden, artifact) as server:
            rows.append(["reflection disabled by config", await _reflect(server.address, None, None)])
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    leaked = sum(
        any(token in line for token in (*_TOKENS.values(), _ROTATED_TOKEN)) for line in capture.lines
    )
    return [
        "## 5. Access control",
        "",
        "One server with TLS, mutual TLS required, bearer tokens from a file and a grant limiting "
        "`search-app` to `Recommend` for `search` (certificates made on the spot by "
        "`tests/hardening/certs.py`: a CA, a server certificate for 127.0.0.1, a client certificate, "
        "and a rogue CA with its own client), then one with health closed and one without reflection:",
        "",
        *_table(["attempt", "observed"], rows),
        f"Log lines written meanwhile (every logger at DEBUG): {len(capture.lines):,}; lines containing a "
        f"token: **{leaked}**. Tokens are compared with `hmac.compare_digest` over SHA-256 digests of "
        "every configured token, with no early exit (`tests/hardening/test_security.py` counts the "
        "comparisons); they are never in the profile, in logs or in error messages (only their names). "
        "Tokens and certificates are re-read on SIGHUP (`UniRankServer.reload_secrets`; "
        "`tests/hardening/test_rotation.py`): new connections get the new certificate, open ones keep "
        "theirs, and a file that cannot be used is refused whole while the current secrets stay in force.",
        "",
    ]


# -- the report -------------------------------------------------------------------------------


KEPT_HEADING = "## Hardening II"
"""Where the written-by-hand part of docs/reliability.md begins; a regenerated report keeps it."""


def _kept_after(out: Path) -> str:
    """The hand-written tail of an existing report (from :data:`KEPT_HEADING` on), to keep."""
    text = out.read_text() if out.is_file() else ""
    start = text.find(f"\n{KEPT_HEADING}")
    return "" if start < 0 else text[start:]


def render(sections: list[list[str]], header: dict[str, str]) -> str:
    lines = [
        "# Reliability",
        "",
        "What `make stress` (`tests/hardening/stress.py`) tried against real UniRank servers, and what "
        "happened: bad input, overload, faults, and attacks on access control. Regenerate with "
        "`make stress` (a few minutes; `STRESS_ARGS=--quick` for a smoke run written under build/). "
        "The fast versions of the same checks run in `make test` (`tests/hardening/`).",
        "",
        *_table(["", ""], [[k, v] for k, v in header.items()]),
    ]
    for section in sections:
        lines += section
    return "\n".join(lines).rstrip() + "\n"


async def run_all(artifact: Path, workdir: Path, quick: bool, only: str | None = None) -> list[list[str]]:
    runs: dict[str, Callable[[], Any]] = {
        "limits": lambda: probe_limits(artifact),
        "overload": lambda: overload(artifact, workdir, quick),
        "sigterm": lambda: sigterm(artifact, quick),
        "faults": lambda: faults(artifact, workdir),
        "attacks": lambda: attacks(artifact, workdir),
    }
    return [await run() for name, run in runs.items() if only in (None, name)]


SECTIONS = ("fuzz", "limits", "overload", "sigterm", "faults", "attacks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stress", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--artifact", type=Path, default=None, help="default: build/stress-artifact (trained once)"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: docs/reliability.md")
    parser.add_argument(
        "--fuzz-examples", type=int, default=2500, help="per fuzz strategy (2,500: 13,000 RPCs)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="seconds instead of minutes; writes under build/"
    )
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        default=None,
        help="run one section alone; writes build/reliability-SECTION.md unless --out says otherwise",
    )
    args = parser.parse_args(argv)
    artifact = ensure_artifact(args.artifact)
    out = args.out or (
        REPO / "build" / f"reliability-{args.only}.md"
        if args.only
        else REPO / "build" / "reliability-quick.md"
        if args.quick
        else REPO / "docs" / "reliability.md"
    )
    examples = 50 if args.quick else args.fuzz_examples
    load_before = _load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unirank-stress-") as tmp:
        workdir = Path(tmp)
        fuzz = run_fuzz(artifact, examples, workdir) if args.only in (None, "fuzz") else []
        sections = (
            [] if args.only == "fuzz" else asyncio.run(run_all(artifact, workdir, args.quick, args.only))
        )
    sections = [fuzz + sections[0], *sections[1:]] if sections else [fuzz]
    import grpc as grpc_module

    header = {
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.system()} {platform.release()}",
        "load average (1, 5, 15 min)": f"before {load_before}; after {_load_average()}",
        "software": f"Python {platform.python_version()}, grpcio {grpc_module.__version__}",
        "artifact": f"`{load_artifact(artifact).model_version}` "
        + ("(the tiny synthetic one)" if args.artifact is None else f"({artifact.name})"),
        "run": f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - started:.0f} s"
        + (" (--quick: short runs, not the numbers to quote)" if args.quick else ""),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(sections, header) + _kept_after(out))
    print(f"stress: wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
