"""Overload smoke test: at 4x the measured capacity the excess is shed with RESOURCE_EXHAUSTED and
RetryInfo, never queued past the admission limit. No wall-clock assertions here (this runs on busy
CI machines); ``make stress`` measures the latency ratio and memory and writes docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from unirank_bench.loadgen import Load, open_loop

from unirank.artifact import ModelInputs
from unirank.client import THROTTLED_LOCALLY, AdaptiveConcurrencyLimit, AsyncRecommenderClient, UniRankError

from ..conftest import TASK_NAMES, profile_with, running_server

LIMIT = 4
SERVICE_S = 0.02  # capacity ~200/s: 4x stays under gRPC's 1,000-call backlog on any machine


class _SlowBackend:
    """The real model behind a fixed extra service time, so capacity is known and CPU-independent;
    it records the most requests it ever saw at once."""

    def __init__(self, inner: Any, service_s: float = SERVICE_S) -> None:
        self.inner, self.name, self.device = inner, inner.name, inner.device
        self.inline = False  # it sleeps
        self.service_s = service_s
        self.active = self.peak = 0

    async def score(
        self, inputs: ModelInputs, deadline: float | None = None, *, tag: Hashable = None
    ) -> np.ndarray:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.service_s)
            return await self.inner.score(inputs, deadline, tag=tag)
        finally:
            self.active -= 1

    async def start(self) -> None: ...

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.parametrize(
    "queue",
    [
        pytest.param({"max_queued_rpcs": 0, "max_queue_wait_ms": 0}, id="slots-only"),
        pytest.param({"max_queued_rpcs": 2 * LIMIT, "max_queue_wait_ms": 40}, id="bounded-line"),
    ],
)
async def test_four_times_capacity_is_shed_with_retry_info(artifact_dir: Path, queue: dict[str, int]) -> None:
    tasks = {name: {"timeout_ms": 10_000} for name in TASK_NAMES}
    # gRPC core's own backlog is made long enough never to overflow in this second: past it core
    # drops calls as CANCELLED before UniRank sees them, which a CI machine starving this process
    # of CPU would otherwise turn into a flaky failure (make stress measures that case).
    server_limits = {"max_concurrent_rpcs": LIMIT, "max_pending_rpcs": 100_000, **queue}
    profile = profile_with(server=server_limits, tasks=tasks)
    async with running_server(profile, artifact_dir) as server:
        pipeline = server.pipeline
        assert pipeline is not None
        backend = _SlowBackend(pipeline.runtime.backend)
        pipeline.runtime.backend = backend  # type: ignore[assignment]
        item = pipeline.runtime.artifact.catalog.items.key(1)

        # Capacity: as many closed-loop callers as the limit admits.
        measure = Load(server.address, item, callers=LIMIT)
        started = time.perf_counter()
        await measure.run(duration_s=0.5)
        capacity = sum(o.code == "OK" for o in measure.outcomes) / (time.perf_counter() - started)
        assert capacity > 0

        # 4x that, open loop: requests keep coming whatever the answers, far past the limit.
        outcomes, offered = await open_loop(server.address, item, rate=4 * capacity, duration_s=1.0)
        async with AsyncRecommenderClient(server.address) as client:
            health = await client.health()

    codes = Counter(o.code for o in outcomes)
    shed = [o for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] > 0 and shed, codes
    assert all(o.reason == "OVERLOADED" and o.retry_after_s and o.retry_after_s > 0 for o in shed)
    assert backend.peak <= LIMIT  # never more than the limit in the model at once
    assert server.admission.in_flight == 0 and server.admission.queued == 0
    assert health == "SERVING"
    if queue["max_queued_rpcs"]:
        # Some waited in line and were admitted, some gave up after the longest wait; an admitted
        # call waited at most that long (plus the calls ahead of it), never behind the whole backlog.
        waited = [o for o in shed if "waited" in o.message]
        assert waited, Counter(o.message for o in shed)
    assert offered > capacity


async def test_a_call_shed_on_arrival_is_counted_for_its_use_case(artifact_dir: Path) -> None:
    async with running_server("cpu-realtime", artifact_dir) as server:
        item = server.pipeline.runtime.artifact.catalog.items.key(1)
        server.admission.max_in_flight = server.admission.max_queued = 0  # no slot, no place in line
        async with AsyncRecommenderClient(server.address, throttle_k=None) as client:
            for _ in range(3):
                with pytest.raises(UniRankError) as refused:
                    await client.related_items(item)
                assert refused.value.code == "RESOURCE_EXHAUSTED" and refused.value.retry_after_s
        stats = server.telemetry.stats.task("related_items")
        assert stats.rpcs_by_code().get("RESOURCE_EXHAUSTED") == 3
        assert server.admission.in_flight == 0


async def test_a_call_that_cannot_meet_its_deadline_is_refused_at_once(artifact_dir: Path) -> None:
    tasks = {name: {"timeout_ms": 10_000} for name in TASK_NAMES}
    profile = profile_with(server={"max_concurrent_rpcs": LIMIT, "max_queued_rpcs": 8}, tasks=tasks)
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address, timeout=10) as client,
    ):
        pipeline = server.pipeline
        assert pipeline is not None
        backend = _SlowBackend(pipeline.runtime.backend, service_s=0.5)
        pipeline.runtime.backend = backend  # type: ignore[assignment]
        item = pipeline.runtime.artifact.catalog.items.key(1)
        await client.related_items(item)  # related_items now takes >= 0.5 s
        assert server.admission.expected_service_s("related_items") >= 0.5
        busy = asyncio.create_task(client.related_items(item))
        while not backend.active:
            await asyncio.sleep(0.01)
        # 0.2 s cannot hold a 0.5 s call: refused on arrival, not queued to die at its deadline.
        with pytest.raises(UniRankError) as refused:
            await client.related_items(item, timeout=0.2)
        assert backend.active == 1  # it never reached the model
        await busy
        # Another use-case has its own estimate (none yet): it is tried.
        await client.category(pipeline.runtime.artifact.catalog.categories.key(1), timeout=5)
        pipeline.runtime.backend = backend.inner
    assert refused.value.code == "RESOURCE_EXHAUSTED" and refused.value.reason == "OVERLOADED"
    assert "less than the" in refused.value.message and refused.value.retry_after_s
    assert server.admission.refused_for_deadline == 1


async def _client_open_loop(
    client: AsyncRecommenderClient, item: str, rate: float, duration_s: float
) -> Counter[str]:
    """Open loop through the UniRank client: ``CODE`` or ``CODE/REASON`` per call."""
    outcomes: Counter[str] = Counter()

    async def one() -> None:
        try:
            await client.related_items(item)
            outcomes["OK"] += 1
        except UniRankError as error:
            outcomes[f"{error.code}/{error.reason}"] += 1

    pending = []
    begin = time.perf_counter()
    for index in range(int(rate * duration_s)):
        delay = begin + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one()))
    await asyncio.gather(*pending)
    return outcomes


def _seen_by_server(server: Any) -> int:
    return sum(server.telemetry.stats.task("related_items").rpcs_by_code().values())


async def test_the_throttling_client_sends_an_overloaded_server_much_less(artifact_dir: Path) -> None:
    tasks = {name: {"timeout_ms": 10_000} for name in TASK_NAMES}
    profile = profile_with(server={"max_concurrent_rpcs": LIMIT, "max_queued_rpcs": 0}, tasks=tasks)
    async with running_server(profile, artifact_dir) as server:
        pipeline = server.pipeline
        assert pipeline is not None
        pipeline.runtime.backend = _SlowBackend(pipeline.runtime.backend)  # type: ignore[assignment]
        item = pipeline.runtime.artifact.catalog.items.key(1)
        rate = 4 * LIMIT / SERVICE_S  # 4x capacity
        runs = {}
        for label, k in (("naive", None), ("throttled", 2.0)):
            before = _seen_by_server(server)
            async with AsyncRecommenderClient(server.address, timeout=10, throttle_k=k) as client:
                outcomes = await _client_open_loop(client, item, rate, duration_s=1.5)
                local = client.throttle.rejected_locally if client.throttle is not None else 0
            runs[label] = (outcomes, _seen_by_server(server) - before, local)

    naive, naive_seen, _ = runs["naive"]
    throttled, throttled_seen, local = runs["throttled"]
    # In one process the client takes CPU from the server too: some calls overflow gRPC core's
    # backlog (CANCELLED), which the throttle counts as refusals like RESOURCE_EXHAUSTED.
    refusals = {"RESOURCE_EXHAUSTED/OVERLOADED", "CANCELLED/"}
    assert set(naive) <= {"OK", *refusals}, naive
    local_code = f"RESOURCE_EXHAUSTED/{THROTTLED_LOCALLY}"
    assert set(throttled) <= {"OK", local_code, *refusals}, throttled
    # Every call sent reached the server's telemetry, but those core dropped from its backlog.
    assert naive_seen + naive["CANCELLED/"] == sum(naive.values())
    assert local == throttled[local_code] > 0
    sent = sum(throttled.values()) - local
    assert throttled_seen + throttled["CANCELLED/"] == sent
    # K = 2: the server is sent about twice what it accepts (plus the first moments, before the
    # client has seen any refusal), where the naive client sends it everything.
    assert sent < 3 * throttled["OK"] + 4 * LIMIT, runs
    assert sent < 0.8 * sum(naive.values()), runs


async def test_a_latency_limited_client_keeps_the_server_out_of_overload(artifact_dir: Path) -> None:
    # The server would queue calls (a line of 2 x LIMIT) and refuse the rest; the client's adaptive
    # concurrency limit reads the queueing in its round trips and refuses the excess itself, so the
    # server refuses nothing and every refusal is RESOURCE_EXHAUSTED THROTTLED_LOCALLY.
    tasks = {name: {"timeout_ms": 10_000} for name in TASK_NAMES}
    server_limits = {
        "max_concurrent_rpcs": LIMIT,
        "max_queued_rpcs": 2 * LIMIT,
        "max_queue_wait_ms": 0,  # a call waits in line as long as it must: no refusal for waiting
        "max_pending_rpcs": 100_000,
    }
    profile = profile_with(server=server_limits, tasks=tasks)
    async with running_server(profile, artifact_dir) as server:
        pipeline = server.pipeline
        assert pipeline is not None
        pipeline.runtime.backend = _SlowBackend(pipeline.runtime.backend)  # type: ignore[assignment]
        item = pipeline.runtime.artifact.catalog.items.key(1)
        rate = 4 * LIMIT / SERVICE_S  # 4x capacity
        limit = AdaptiveConcurrencyLimit(initial=LIMIT)
        async with AsyncRecommenderClient(
            server.address, timeout=10, throttle_k=None, concurrency_limit=limit
        ) as client:
            outcomes = await _client_open_loop(client, item, rate, duration_s=1.5)
            # A call cancelled by its caller gives its slot back.
            call = asyncio.create_task(client.related_items(item))
            await asyncio.sleep(0.005)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        admission = server.admission
    local = f"RESOURCE_EXHAUSTED/{THROTTLED_LOCALLY}"
    assert set(outcomes) == {"OK", local}, outcomes
    assert outcomes[local] == limit.rejected_locally > 0
    assert outcomes["OK"] > 0
    assert admission.refused_for_deadline == 0
    assert limit.in_flight == 0
    # It settles near what the server serves at once, not at the 12 the server would take in.
    assert limit.limit < 3 * LIMIT, limit.limit
