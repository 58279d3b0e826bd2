"""The dynamic batcher's contract: batching, ordering, error fan-out, deadlines, back-pressure, close."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from unirank.server.backends.base import BackendError
from unirank.server.batching import (
    BadBatchResult,
    BatcherClosed,
    BatchInfo,
    DeadlineDropped,
    DynamicBatcher,
    MemberFailed,
    QueueFull,
)

# Guards against a hang turning into a stuck test run; never a latency assertion.
GUARD_S = 10.0


class Recorder:
    """An async handler that records every batch and can be held open to pile requests up."""

    def __init__(self, blocked: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        if not blocked:
            self.release.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        await self.release.wait()
        return [item * 10 for item in items]


def make(handler: Any, **overrides: Any) -> DynamicBatcher[int, int]:
    params: dict[str, Any] = {"max_batch_size": 4, "max_queue_delay_ms": 20.0, "max_queue_size": 64}
    params.update(overrides)
    return DynamicBatcher(handler, **params)


async def gather(batcher: DynamicBatcher[int, int], items: list[int], **kwargs: Any) -> list[Any]:
    calls = [batcher.submit(item, **kwargs) for item in items]
    return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), GUARD_S)


async def test_concurrent_submits_form_batches_and_keep_order() -> None:
    handler = Recorder()
    batcher = make(handler, max_batch_size=8)
    items = [7, 3, 9, 1, 4, 8, 2, 6]
    results = await gather(batcher, items)
    assert results == [item * 10 for item in items]
    # Every submit was queued before the worker ran, so they make one full batch in submit order.
    assert handler.batches == [items]
    assert batcher.stats().batches == 1
    assert batcher.stats().mean_batch_size == 8.0


async def test_max_batch_size_is_respected() -> None:
    handler = Recorder()
    batcher = make(handler, max_batch_size=3)
    results = await gather(batcher, list(range(10)))
    assert results == [i * 10 for i in range(10)]
    assert [len(batch) for batch in handler.batches] == [3, 3, 3, 1]
    assert [item for batch in handler.batches for item in batch] == list(range(10))


async def test_batch_waits_for_late_arrivals_within_the_delay() -> None:
    handler = Recorder()
    batcher = make(handler, max_batch_size=2, max_queue_delay_ms=60_000.0)
    first = asyncio.create_task(batcher.submit(1))
    for _ in range(5):
        await asyncio.sleep(0)  # the worker runs and starts waiting for a second member
    assert handler.batches == []
    second = asyncio.create_task(batcher.submit(2))
    assert await asyncio.wait_for(asyncio.gather(first, second), GUARD_S) == [10, 20]
    assert handler.batches == [[1, 2]]


async def test_lone_request_runs_once_the_delay_expires() -> None:
    infos: list[BatchInfo] = []
    handler = Recorder()
    batcher = make(handler, max_batch_size=100, max_queue_delay_ms=30.0, observer=infos.append)
    assert await asyncio.wait_for(batcher.submit(5), GUARD_S) == 50
    assert handler.batches == [[5]]
    # A lower bound only: the batch may not close before the oldest member waited the delay.
    assert infos[0].queue_wait_s[0] >= 0.030 - 1e-3


async def test_zero_delay_runs_what_is_queued() -> None:
    handler = Recorder()
    batcher = make(handler, max_batch_size=100, max_queue_delay_ms=0.0)
    assert await gather(batcher, [1, 2, 3]) == [10, 20, 30]
    assert handler.batches == [[1, 2, 3]]


async def test_handler_error_fans_out_to_every_member() -> None:
    seen: list[list[int]] = []

    async def handler(items: list[int]) -> list[int]:
        seen.append(items)
        raise ValueError("model exploded")

    batcher = make(handler)
    results = await gather(batcher, [1, 2, 3, 4])
    assert len(seen) == 1
    assert all(isinstance(r, ValueError) and "model exploded" in str(r) for r in results)
    assert batcher.stats().failed_batches == 1


async def test_a_member_failed_result_fails_only_that_member() -> None:
    async def handler(items: list[int]) -> list[int | MemberFailed]:
        return [MemberFailed(ValueError(f"bad {i}")) if i % 2 else i * 10 for i in items]

    batcher = make(handler)
    results = await gather(batcher, [1, 2, 3, 4])
    assert results[1] == 20 and results[3] == 40
    assert isinstance(results[0], ValueError) and str(results[0]) == "bad 1"
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad 3"
    assert batcher.stats().batches == 1 and batcher.stats().failed_batches == 0


async def test_batcher_keeps_working_after_a_failed_batch() -> None:
    calls = 0

    async def handler(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first batch fails")
        return items

    batcher = make(handler, max_batch_size=2)
    results = await gather(batcher, [1, 2, 3, 4])
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError)
    assert results[2:] == [3, 4]


async def test_wrong_length_result_is_an_error_for_every_member() -> None:
    async def handler(items: list[int]) -> list[int]:
        return items[:-1]

    results = await gather(make(handler), [1, 2, 3])
    assert all(isinstance(r, BadBatchResult) and "2 results for a batch of 3" in str(r) for r in results)


async def test_non_list_result_is_an_error() -> None:
    async def handler(items: list[int]) -> Any:
        return 42

    results = await gather(make(handler), [1, 2])
    assert all(isinstance(r, BadBatchResult) for r in results)


async def test_expired_deadline_is_dropped_before_execution() -> None:
    loop = asyncio.get_running_loop()
    handler = Recorder(blocked=True)
    batcher = make(handler, max_batch_size=4, max_queue_delay_ms=0.0)
    running = asyncio.create_task(batcher.submit(1))
    await asyncio.wait_for(handler.entered.wait(), GUARD_S)  # batch [1] holds the handler
    late = asyncio.create_task(batcher.submit(2, deadline=loop.time() + 0.001))
    patient = asyncio.create_task(batcher.submit(3, deadline=loop.time() + 3600.0))
    no_deadline = asyncio.create_task(batcher.submit(4))
    await asyncio.sleep(0.02)  # request 2's deadline is now in the past
    handler.release.set()
    results = await asyncio.wait_for(
        asyncio.gather(running, late, patient, no_deadline, return_exceptions=True), GUARD_S
    )
    assert results[0] == 10
    assert isinstance(results[1], DeadlineDropped)
    assert results[2:] == [30, 40]
    assert handler.batches == [[1], [3, 4]]
    assert batcher.stats().deadline_dropped == 1


async def test_deadline_already_past_at_submit_is_rejected() -> None:
    loop = asyncio.get_running_loop()
    handler = Recorder()
    batcher = make(handler)
    with pytest.raises(DeadlineDropped):
        await batcher.submit(1, deadline=loop.time() - 1.0)
    assert handler.batches == []


async def test_full_queue_raises_queue_full_immediately() -> None:
    handler = Recorder(blocked=True)
    batcher = make(handler, max_batch_size=2, max_queue_delay_ms=0.0, max_queue_size=2)
    running = asyncio.create_task(batcher.submit(1))
    await asyncio.wait_for(handler.entered.wait(), GUARD_S)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    assert batcher.queue_depth == 2
    rejected = asyncio.create_task(batcher.submit(4))
    await asyncio.sleep(0)  # one step: it must not wait for room
    assert rejected.done() and isinstance(rejected.exception(), QueueFull)
    handler.release.set()
    assert await asyncio.wait_for(asyncio.gather(running, *queued), GUARD_S) == [10, 20, 30]
    assert 4 not in [item for batch in handler.batches for item in batch]


async def test_cancelled_request_is_skipped_and_frees_its_slot() -> None:
    handler = Recorder(blocked=True)
    batcher = make(handler, max_batch_size=4, max_queue_delay_ms=0.0, max_queue_size=2)
    running = asyncio.create_task(batcher.submit(1))
    await asyncio.wait_for(handler.entered.wait(), GUARD_S)
    doomed = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert batcher.queue_depth == 1
    also_kept = asyncio.create_task(batcher.submit(4))  # fits only because 2's slot was freed
    handler.release.set()
    assert await asyncio.wait_for(asyncio.gather(running, kept, also_kept), GUARD_S) == [10, 30, 40]
    assert handler.batches == [[1], [3, 4]]
    assert batcher.stats().cancelled == 1


async def test_request_cancelled_just_before_its_batch_forms_is_skipped() -> None:
    handler = Recorder(blocked=True)
    batcher = make(handler, max_batch_size=4, max_queue_delay_ms=0.0)
    running = asyncio.create_task(batcher.submit(1))
    await asyncio.wait_for(handler.entered.wait(), GUARD_S)
    doomed = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    # The worker wakes before the cancelled caller does, so it forms the next batch while
    # request 2 is still queued with a cancelled future.
    handler.release.set()
    doomed.cancel()
    assert await asyncio.wait_for(running, GUARD_S) == 10
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert await asyncio.wait_for(batcher.submit(3), GUARD_S) == 30
    assert handler.batches == [[1], [3]]


async def test_max_batch_size_one_is_a_pass_through() -> None:
    # Both calls must be inside the handler at once: nothing queues them behind each other.
    both_inside = asyncio.Barrier(2)
    seen: list[list[int]] = []

    async def handler(items: list[int]) -> list[int]:
        seen.append(items)
        await both_inside.wait()
        return [items[0] + 100]

    batcher = make(handler, max_batch_size=1, max_queue_delay_ms=10_000.0)
    assert await gather(batcher, [1, 2]) == [101, 102]
    assert sorted(seen) == [[1], [2]]
    assert batcher.stats().batches == 2


async def test_pass_through_still_checks_result_length_and_errors() -> None:
    async def empty(items: list[int]) -> list[int]:
        return []

    with pytest.raises(BadBatchResult, match="0 results for a batch of 1"):
        await make(empty, max_batch_size=1).submit(1)


async def test_sync_handler_runs_off_the_loop_in_the_given_executor() -> None:
    loop_thread = threading.get_ident()
    threads: list[str] = []

    def handler(items: list[int]) -> list[int]:
        assert threading.get_ident() != loop_thread
        threads.append(threading.current_thread().name)
        return [-item for item in items]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-test") as executor:
        batcher = make(handler, executor=executor)
        assert await gather(batcher, [1, 2, 3]) == [-1, -2, -3]
        passthrough = make(handler, executor=executor, max_batch_size=1)
        assert await passthrough.submit(9) == -9
    assert threads and all(name.startswith("batch-test") for name in threads)


async def test_observer_sees_each_batch_and_its_failures_do_not_leak() -> None:
    infos: list[BatchInfo] = []

    def observer(info: BatchInfo) -> None:
        infos.append(info)
        raise RuntimeError("telemetry is broken")

    batcher = make(Recorder(), max_batch_size=2, observer=observer)
    calls = [batcher.submit(i, request_id=f"req-{i}") for i in range(3)]
    assert await asyncio.wait_for(asyncio.gather(*calls), GUARD_S) == [0, 10, 20]
    assert [info.size for info in infos] == [2, 1]
    assert [info.request_ids for info in infos] == [("req-0", "req-1"), ("req-2",)]
    assert all(len(info.queue_wait_s) == info.size and info.error is None for info in infos)


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_batch_size": 0},
        {"max_batch_size": -1},
        {"max_batch_size": 2.5},
        {"max_queue_delay_ms": -1.0},
        {"max_queue_delay_ms": float("nan")},
        {"max_queue_delay_ms": float("inf")},
        {"max_queue_size": 0},
        {"max_queue_size": True},
    ],
)
def test_parameters_are_validated_at_construction(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(lambda items: items, **overrides)


def test_non_callable_handler_is_rejected() -> None:
    with pytest.raises(ValueError):
        make(42)


def test_constructed_outside_a_running_loop() -> None:
    # No loop exists here; the queue and worker must only appear on first submit.
    def handler(items: list[int]) -> list[int]:
        return [item + 1 for item in items]

    batcher = make(handler)

    async def use() -> list[Any]:
        return await gather(batcher, [1, 2, 3])

    assert asyncio.run(use()) == [2, 3, 4]


async def test_close_drains_waiting_requests_without_waiting_for_the_delay() -> None:
    handler = Recorder()
    batcher = make(handler, max_batch_size=8, max_queue_delay_ms=60_000.0)
    calls = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    await asyncio.wait_for(batcher.close(), GUARD_S)
    assert await asyncio.wait_for(asyncio.gather(*calls), GUARD_S) == [0, 10, 20]
    with pytest.raises(BatcherClosed):
        await batcher.submit(9)
    await batcher.close()  # idempotent


async def test_close_without_drain_fails_waiting_requests_but_finishes_the_running_batch() -> None:
    handler = Recorder(blocked=True)
    batcher = make(handler, max_batch_size=2, max_queue_delay_ms=0.0)
    running = asyncio.create_task(batcher.submit(1))
    await asyncio.wait_for(handler.entered.wait(), GUARD_S)
    waiting = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    closing = asyncio.create_task(batcher.close(drain=False))
    await asyncio.sleep(0)
    handler.release.set()
    await asyncio.wait_for(closing, GUARD_S)
    assert await running == 10
    with pytest.raises(BatcherClosed):
        await waiting
    assert handler.batches == [[1]]


async def test_close_before_first_use() -> None:
    batcher = make(Recorder())
    await batcher.close()
    with pytest.raises(BatcherClosed):
        await batcher.submit(1)


def test_the_batchers_own_errors_are_not_backend_errors() -> None:
    # A request dropped at its deadline, refused by a full queue or by a closed batcher never
    # reached the model: counting it as a backend error hides overload as a broken model.
    for error in (DeadlineDropped, QueueFull, BatcherClosed, BadBatchResult):
        assert not issubclass(error, BackendError), error
