"""``unirank serve`` as a real subprocess, and a load that tells what happened to every request.

Shared by the fault tests and ``tests/hardening/stress.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from unirank.client.errors import error_from_rpc
from unirank.v1 import recommender_pb2 as pb

UNIRANK = Path(sys.executable).with_name("unirank")
RECOMMEND = "/unirank.v1.RecommenderService/Recommend"
_SERVING = re.compile(r"unirank: serving \S+ on (\S+)")


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    address: str
    output: list[str] = field(default_factory=list)
    """Every line the process wrote (stdout and stderr together)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """Resident memory now (Linux)."""
        return _status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        """The high-water mark of resident memory (Linux)."""
        return _status_kib(self.pid, "VmHWM")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


async def run_serve(args: Sequence[str], timeout: float = 60.0) -> tuple[int, str]:
    """Run ``unirank serve ARGS`` to its end; its exit code and everything it wrote."""
    process = await asyncio.create_subprocess_exec(
        str(UNIRANK), "serve", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


@contextlib.asynccontextmanager
async def serving(
    profile: Path,
    artifact: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> AsyncIterator[ServeProcess]:
    """``unirank serve`` on a free port, until the block ends (then SIGKILL if it still runs).

    ``cpus`` pins the server (Linux), so a load generator pinned elsewhere cannot take its cores.
    """
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    process = await asyncio.create_subprocess_exec(
        str(UNIRANK),
        "serve",
        "--profile",
        str(profile),
        "--artifact",
        str(artifact),
        "--port",
        "0",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        preexec_fn=pin,
    )
    assert process.stdout is not None
    lines: list[str] = []
    address = ""
    async with asyncio.timeout(60):
        while not address:
            raw = await process.stdout.readline()
            if not raw:
                raise AssertionError("unirank serve exited before serving:\n" + "".join(lines))
            lines.append(raw.decode(errors="replace"))
            if match := _SERVING.search(lines[-1]):
                address = match.group(1)
    served = ServeProcess(process, address, lines)

    async def drain_output() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            lines.append(raw.decode(errors="replace"))

    reader = asyncio.create_task(drain_output())
    try:
        yield served
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await reader


@dataclass
class Outcome:
    """One request of a load run."""

    started_s: float
    ended_s: float
    code: str
    """``OK`` or the gRPC status code name."""
    reason: str = ""
    retry_after_s: float | None = None
    fallback: bool = False
    message: str = ""

    @property
    def latency_s(self) -> float:
        return self.ended_s - self.started_s


class _Sender:
    """One related-items request, serialized once and sent as bytes: the load costs as little CPU
    as it can on a machine it shares with the server."""

    def __init__(self, channel: grpc.aio.Channel, anchor_item_id: str) -> None:
        request = pb.RecommendRequest()
        request.context.related_items.anchor_item_id = anchor_item_id
        self._payload = request.SerializeToString()
        self._call = channel.unary_unary(RECOMMEND)

    async def send(self) -> Outcome:
        started = time.perf_counter()
        try:
            answer = await self._call(self._payload, timeout=30)
        except grpc.aio.AioRpcError as rpc_error:
            error = error_from_rpc(rpc_error)
            return Outcome(
                started,
                time.perf_counter(),
                error.code,
                error.reason,
                error.retry_after_s,
                message=error.message,
            )
        ended = time.perf_counter()
        return Outcome(started, ended, "OK", fallback=pb.RecommendResponse.FromString(answer).fallback)


@dataclass
class Load:
    """Closed-loop callers, each sending its next request when the last is answered; each stops at
    its first UNAVAILABLE (a real client would fail over to another replica then)."""

    address: str
    anchor_item_id: str
    callers: int
    outcomes: list[Outcome] = field(default_factory=list)
    in_flight: int = 0

    async def run(self, duration_s: float | None = None) -> None:
        until = None if duration_s is None else time.perf_counter() + duration_s
        async with grpc.aio.insecure_channel(self.address) as channel:
            sender = _Sender(channel, self.anchor_item_id)
            await asyncio.gather(*(self._caller(sender, until) for _ in range(self.callers)))

    async def run_count(self, requests: int) -> None:
        """Send ``requests`` requests in all, ``callers`` at a time."""
        left = [requests]

        async def caller(sender: _Sender) -> None:
            while left[0] > 0:
                left[0] -= 1
                self.outcomes.append(await sender.send())

        async with grpc.aio.insecure_channel(self.address) as channel:
            sender = _Sender(channel, self.anchor_item_id)
            await asyncio.gather(*(caller(sender) for _ in range(self.callers)))

    async def _caller(self, sender: _Sender, until: float | None) -> None:
        while until is None or time.perf_counter() < until:
            self.in_flight += 1
            try:
                outcome = await sender.send()
            finally:
                self.in_flight -= 1
            self.outcomes.append(outcome)
            if outcome.code == "UNAVAILABLE":
                return
            if outcome.code == "RESOURCE_EXHAUSTED" and outcome.retry_after_s:
                await asyncio.sleep(outcome.retry_after_s)  # as RetryInfo asks: no refusal spin


async def open_loop(
    address: str, anchor_item_id: str, rate: float, duration_s: float
) -> tuple[list[Outcome], float]:
    """Send at ``rate`` requests/s whatever the answers do, so overload is not hidden by a client
    that waits. Returns every outcome and the rate actually achieved (the sender may fall behind
    on a small machine)."""
    outcomes: list[Outcome] = []

    async def one(sender: _Sender) -> None:
        outcomes.append(await sender.send())

    async with grpc.aio.insecure_channel(address) as channel:
        sender = _Sender(channel, anchor_item_id)
        pending: set[asyncio.Task[None]] = set()
        total = int(rate * duration_s)
        begin = time.perf_counter()
        for index in range(total):
            delay = begin + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(sender))
            pending.add(task)
            task.add_done_callback(pending.discard)
        sent_s = time.perf_counter() - begin
        await asyncio.gather(*pending)
    return outcomes, total / sent_s


@dataclass(frozen=True)
class SigtermReport:
    requests: int
    in_flight_at_signal: int
    finished_after_signal: int
    """Requests sent before the signal that completed OK after it: drained, not cut."""
    refused_draining: int
    refused_overloaded: int
    """Refused at admission with RESOURCE_EXHAUSTED + RetryInfo: never started, retried elsewhere."""
    refused_closed: int
    failed: list[Outcome]
    exit_code: int
    drain_s: float


async def sigterm_under_load(
    served: ServeProcess, anchor_item_id: str, callers: int, warm_s: float
) -> SigtermReport:
    """Load the server, SIGTERM it mid-load, and classify every request.

    A request sent before the signal must succeed, or be refused as DRAINING (it reached the server
    after draining began: refused with RetryInfo, never started) or OVERLOADED (refused at admission
    with RetryInfo, never started). After the signal, a request may also find the port closed
    (UNAVAILABLE). Anything else is a failed request.
    """
    load = Load(served.address, anchor_item_id, callers)
    running = asyncio.create_task(load.run())
    await asyncio.sleep(warm_s)
    in_flight = load.in_flight
    signalled = time.perf_counter()
    served.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(running, 60)
    exit_code = await asyncio.wait_for(served.process.wait(), 60)
    drain_s = time.perf_counter() - signalled
    failed = []
    for outcome in load.outcomes:
        before = outcome.started_s < signalled
        if outcome.code == "OK":
            continue
        draining = outcome.code == "UNAVAILABLE" and outcome.reason == "DRAINING"
        overloaded = outcome.code == "RESOURCE_EXHAUSTED" and outcome.reason == "OVERLOADED"
        closed = outcome.code == "UNAVAILABLE" and not outcome.reason and not before
        if not (draining or overloaded or closed):
            failed.append(outcome)
    return SigtermReport(
        requests=len(load.outcomes),
        in_flight_at_signal=in_flight,
        finished_after_signal=sum(
            o.code == "OK" and o.started_s < signalled < o.ended_s for o in load.outcomes
        ),
        refused_draining=sum(o.reason == "DRAINING" for o in load.outcomes),
        refused_overloaded=sum(o.reason == "OVERLOADED" for o in load.outcomes),
        refused_closed=sum(o.code == "UNAVAILABLE" and not o.reason for o in load.outcomes),
        failed=failed,
        exit_code=exit_code,
        drain_s=drain_s,
    )
