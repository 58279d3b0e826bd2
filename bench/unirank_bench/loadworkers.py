"""The bench's load: the loops of :mod:`unirank_bench.loadgen` in worker processes, each an
asyncio loop with its own grpc.aio channels, driven one :class:`Job` at a time.

Closed loop: C callers share the workers. Open loop: each worker takes its share of the rate;
latency is measured from the *scheduled* send time, so a stalled server shows up as latency
rather than as fewer requests. Answers are parsed with the real message class so the generator
can count cache hits, fallbacks and malformed answers. Every target (UniRank, the floors,
MLServer) is driven by this same code; only the method path, the payloads and the response
parser differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from unirank_bench.loadgen import Outcome, closed_loop, scheduled, send_bytes

MAX_OUTSTANDING = 4096
"""Open loop: scheduled requests beyond this many in flight are counted as dropped, not sent."""


@dataclass(frozen=True)
class Job:
    """One measurement, handed to every worker (each takes its share of concurrency or rate)."""

    address: str
    method: str
    parser: str
    """How to check answers: ``unirank`` (RecommendResponse), ``v2`` (ModelInferResponse), ``none``."""
    payload_file: str
    payload_kind: str
    """``unirank`` or ``v2``: which serialized form of the workload to send."""
    workload: str
    """Which of the payload file's workloads (a use-case, ``mixed``, ``retrieval/...``)."""
    mode: str
    """``closed`` or ``open``."""
    concurrency: int = 1
    """Closed loop: callers in all, shared among the workers."""
    rate: float = 0.0
    """Open loop: requests/s in all, shared among the workers."""
    start_at: float = 0.0
    """``time.monotonic()`` (system-wide on Linux) at which sending starts; warm-up runs until
    ``measure_from``; only answers inside [measure_from, measure_to] are measured."""
    measure_from: float = 0.0
    measure_to: float = 0.0
    timeout_s: float = 5.0
    gen_dir: str = ""
    """Where the generated V2 module lives (parser ``v2``)."""
    nonce: str = ""
    """UniRank payloads only: makes every pass over the workload distinct to the response cache
    (see :func:`_stream`). Unique per run, so one run never answers from another's cache."""
    worker_index: int = 0
    workers: int = 1
    channels: int = 1
    """Connections per worker process; callers take them in turn. One TCP connection always
    reaches the same server process, so spreading load over ``--workers`` needs several."""


@dataclass
class WorkerResult:
    latencies_ns: np.ndarray
    errors: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    items: int = 0
    dropped: int = 0
    bad_answers: int = 0
    client_cpu_s: float = 0.0


class _Checker:
    """Parses answers with the real message classes and counts what they say."""

    def __init__(self, parser: str, gen_dir: str) -> None:
        self.kind = parser
        self.cache_hits = self.fallbacks = self.items = self.bad = 0
        if parser == "unirank":
            from unirank.v1 import recommender_pb2 as pb

            self._from = pb.RecommendResponse.FromString
        elif parser == "v2":
            from unirank_bench import v2

            self._from = v2.load(Path(gen_dir)).ModelInferResponse.FromString
        elif parser != "none":
            raise ValueError(f"unknown parser {parser!r}")

    def check(self, answer: bytes) -> None:
        if self.kind == "none":
            return
        message: Any = self._from(answer)
        if self.kind == "unirank":
            self.cache_hits += message.served_from_cache
            self.fallbacks += message.fallback
            self.items += len(message.items)
            if not message.items and not message.fallback:
                self.bad += 1
        else:
            outputs = message.outputs
            if not outputs or not outputs[0].contents.fp32_contents:
                self.bad += 1
            else:
                self.items += len(outputs[0].contents.fp32_contents)


_payload_cache: dict[tuple[str, str], dict[str, list[bytes]]] = {}


def _payloads(job: Job) -> list[bytes]:
    key = (job.payload_file, job.payload_kind)
    if key not in _payload_cache:
        from unirank_bench.workload import Payloads

        loaded = Payloads.load(Path(job.payload_file))
        _payload_cache[key] = loaded.unirank if job.payload_kind == "unirank" else loaded.v2
    return _payload_cache[key][job.workload]


class _Stream:
    """The requests of one worker, endless: pass k over the workload is tagged with pass k.

    A workload is a few thousand sampled requests; replayed verbatim, every pass after the first
    would be answered by the server's response cache, which real traffic (caller-supplied
    candidates, user ids, histories) almost never is. So each UniRank request gets one more
    ``context.history_item_ids`` entry, ``<nonce>-<pass>``, appended as serialized bytes (protobuf
    appends to a repeated field of a merged message). No catalogue has that item, so the encoder
    drops it like any unknown history item (one dict lookup): scores, rules and the answer are
    unchanged, but the cache key differs. Repeats *within* a pass (the same head query sampled
    twice) still hit the cache; repeats *across* passes and runs do not.
    """

    def __init__(self, job: Job, payloads: list[bytes]) -> None:
        self._payloads = payloads
        self._tagged = job.payload_kind == "unirank" and bool(job.nonce)
        self._nonce = job.nonce
        self._suffixes: dict[int, bytes] = {}
        self.cursor = (job.worker_index * len(payloads)) // job.workers

    def _suffix(self, lap: int) -> bytes:
        suffix = self._suffixes.get(lap)
        if suffix is None:
            from unirank.v1 import recommender_pb2 as pb

            tag = pb.RecommendRequest(context=pb.RequestContext(history_item_ids=[f"{self._nonce}-{lap}"]))
            suffix = self._suffixes[lap] = tag.SerializeToString()
        return suffix

    def next(self) -> bytes:
        index = self.cursor
        self.cursor += 1
        lap, position = divmod(index, len(self._payloads))
        payload = self._payloads[position]
        return payload + self._suffix(lap) if self._tagged else payload


async def _run(job: Job) -> WorkerResult:
    import grpc

    payloads = _payloads(job)
    checker = _Checker(job.parser, job.gen_dir)
    options = [
        ("grpc.max_receive_message_length", 16 << 20),
        ("grpc.max_send_message_length", 16 << 20),
        ("grpc.use_local_subchannel_pool", 1),  # a connection of its own per channel
    ]
    # A distinct argument per channel as well: channels with equal arguments may share a connection.
    channels = [
        grpc.aio.insecure_channel(job.address, options=[*options, ("unirank.bench.channel", i)])
        for i in range(max(job.channels, 1))
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), timeout=10)
        calls = [c.unary_unary(job.method) for c in channels]  # no serializers: bytes in, bytes out
        if job.mode == "closed":
            result = await _closed(job, calls, payloads, checker)
        elif job.mode == "open":
            result = await _open(job, calls, payloads, checker)
        else:
            raise ValueError(f"unknown mode {job.mode!r}")
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    result.cache_hits, result.fallbacks, result.items = checker.cache_hits, checker.fallbacks, checker.items
    result.bad_answers = checker.bad
    return result


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _closed(job: Job, calls: list[Any], payloads: list[bytes], checker: _Checker) -> WorkerResult:
    share = job.concurrency // job.workers + (1 if job.worker_index < job.concurrency % job.workers else 0)
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    # Workers start at different offsets so they do not send the same stream in lockstep.
    stream = _Stream(job, payloads)
    cpu_marks: list[float] = []

    def record(outcome: Outcome, answer: bytes) -> None:
        if job.measure_from <= outcome.ended_s <= job.measure_to:
            if outcome.code == "OK":
                latencies.append(round((outcome.ended_s - outcome.started_s) * 1e9))
                checker.check(answer)
            else:
                errors[outcome.code] += 1

    async def cpu_sampler() -> None:
        await _sleep_until(job.measure_from)
        cpu_marks.append(_cpu())
        await _sleep_until(job.measure_to)
        cpu_marks.append(_cpu())

    await _sleep_until(job.start_at)
    sampler = asyncio.create_task(cpu_sampler())
    await closed_loop(
        lambda caller: send_bytes(calls[caller % len(calls)], stream.next(), job.timeout_s),
        share,
        record,
        lambda: time.monotonic() < job.measure_to,
        max_retry_wait_s=1.0,
    )
    await sampler
    return WorkerResult(
        latencies_ns=np.asarray(latencies, dtype=np.int64),
        errors=errors,
        completed=len(latencies),
        client_cpu_s=cpu_marks[1] - cpu_marks[0] if len(cpu_marks) == 2 else 0.0,
    )


async def _open(job: Job, calls: list[Any], payloads: list[bytes], checker: _Checker) -> WorkerResult:
    rate = job.rate / job.workers
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    cpu_marks: list[float] = []

    def measured(when: float) -> bool:
        return job.measure_from <= when <= job.measure_to

    async def one(index: int, when: float) -> None:
        if not cpu_marks and when >= job.measure_from:
            cpu_marks.append(_cpu())
        outcome, answer = await send_bytes(calls[index % len(calls)], stream.next(), job.timeout_s)
        if not measured(when):
            return
        if outcome.code == "OK":
            latencies.append(round((outcome.ended_s - when) * 1e9))  # from the scheduled time
            checker.check(answer)
        else:
            errors[outcome.code] += 1

    await _sleep_until(job.start_at)
    stream = _Stream(job, payloads)
    first = job.start_at + job.worker_index / (rate * job.workers)  # workers interleave
    _, skipped, _ = await scheduled(
        rate,
        first,
        lambda index, when: when >= job.measure_to,
        one,
        max_outstanding=MAX_OUTSTANDING,
        drain_s=job.timeout_s + 1,
        after_sending=lambda: cpu_marks.append(_cpu()),
    )
    return WorkerResult(
        latencies_ns=np.asarray(latencies, dtype=np.int64),
        errors=errors,
        completed=len(latencies),
        dropped=sum(measured(when) for when in skipped),
        client_cpu_s=cpu_marks[-1] - cpu_marks[0] if len(cpu_marks) == 2 else 0.0,
    )


def _worker_main(conn: Connection) -> None:
    import grpc  # noqa: F401  (imported once here, not inside the first measured job)

    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            conn.send(("ok", asyncio.run(_run(job))))
        except Exception as exc:  # reported to the orchestrator, which decides
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


@dataclass
class RunResult:
    """One job's answers, all workers merged."""

    latencies_ns: np.ndarray
    errors: dict[str, int]
    completed: int
    cache_hits: int
    fallbacks: int
    items: int
    dropped: int
    bad_answers: int
    client_cpu_s: float


class LoadGenerator:
    """A pool of worker processes kept alive across jobs (spawning one costs ~0.5 s of imports)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for _ in range(workers):
            parent, child = context.Pipe()
            proc = context.Process(target=_worker_main, args=(child,), daemon=True)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def start(self, job: Job) -> None:
        """Hand the job to every worker (each takes its share); collect with :meth:`collect`."""
        workers = len(self._conns)
        for index, conn in enumerate(self._conns):
            conn.send(replace(job, worker_index=index, workers=workers))

    def collect(self) -> RunResult:
        parts: list[WorkerResult] = []
        failures: list[str] = []
        for conn in self._conns:
            status, value = conn.recv()
            if status == "ok":
                parts.append(value)
            else:
                failures.append(value)
        if failures:
            raise RuntimeError(f"load generator failed: {failures}")
        errors: Counter[str] = Counter()
        for part in parts:
            errors.update(part.errors)
        return RunResult(
            latencies_ns=np.concatenate([p.latencies_ns for p in parts]),
            errors=dict(errors),
            completed=sum(p.completed for p in parts),
            cache_hits=sum(p.cache_hits for p in parts),
            fallbacks=sum(p.fallbacks for p in parts),
            items=sum(p.items for p in parts),
            dropped=sum(p.dropped for p in parts),
            bad_answers=sum(p.bad_answers for p in parts),
            client_cpu_s=sum(p.client_cpu_s for p in parts),
        )

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
