"""Dynamic micro-batching: concurrent single requests become one handler call, results fan back out."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:
    from unirank.server.config import BatchingConfig

T = TypeVar("T")
R = TypeVar("R")

logger = logging.getLogger(__name__)


class BatchingError(Exception):
    """Base of the batcher's own errors: the request was not scored, for a reason of the batcher's
    rather than the model's (the pipeline tells overload and deadlines from a broken model)."""


class QueueFull(BatchingError):
    """The bounded queue is full (the pipeline answers RESOURCE_EXHAUSTED)."""


class DeadlineDropped(BatchingError):
    """The request's deadline passed while it waited, so it was never executed (the pipeline
    answers as for its deadline, never as for a backend error)."""


class BatcherClosed(BatchingError):
    """The batcher was closed before this request could run."""


class BadBatchResult(BatchingError):
    """The handler returned something other than one result per request."""


class MemberFailed:
    """Returned by a batch handler in place of one member's result: that member gets ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


BatchHandler = (
    Callable[[list[T]], Awaitable[Sequence[R | MemberFailed]]]
    | Callable[[list[T]], Sequence[R | MemberFailed]]
)
"""``list[T] -> list[R]`` of the same length and order; ``async def`` or a plain function. A
:class:`MemberFailed` in place of a result fails that member alone; raising fails the batch."""


@dataclass(frozen=True)
class BatchInfo:
    """What one executed batch looked like; handed to the observer (telemetry: one span per batch)."""

    size: int
    """Requests executed together."""
    request_ids: tuple[Hashable, ...]
    """Member ids in execution order: the caller's ``request_id`` (the server's telemetry passes a
    ``BatchMember`` naming the request's task and span) or a sequence number."""
    queue_wait_s: tuple[float, ...]
    """Per member: seconds from ``submit`` to the batch being formed."""
    started_at: float
    """``loop.time()`` when the handler was called."""
    duration_s: float
    """Seconds the handler took."""
    error: BaseException | None
    """The error fanned out to every member, or None."""


BatchObserver = Callable[[BatchInfo], None]


@dataclass(frozen=True)
class BatcherStats:
    """Counters since construction (benchmarks and tests)."""

    batches: int
    """Handler calls made."""
    requests: int
    """Requests handed to the handler across those calls."""
    failed_batches: int
    deadline_dropped: int
    """Requests dropped because their deadline passed before execution."""
    cancelled: int
    """Requests whose caller gave up before execution, so they were never run."""

    @property
    def mean_batch_size(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


@dataclass(eq=False)
class _Request(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    deadline: float | None
    enqueued_at: float
    request_id: Hashable


class DynamicBatcher(Generic[T, R]):
    """Collects concurrent :meth:`submit` calls into batches for one handler.

    A batch closes when it holds ``max_batch_size`` requests or when its oldest member has waited
    ``max_queue_delay_ms``; batches run one at a time, and requests arriving meanwhile form the
    next one. ``max_batch_size=1`` skips the queue and calls the handler directly per request.
    """

    def __init__(
        self,
        handler: BatchHandler[T, R],
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue_size: int,
        executor: Executor | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        if not callable(handler):
            raise ValueError("handler must be callable")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        if not isinstance(max_queue_delay_ms, int | float) or not 0.0 <= max_queue_delay_ms < float("inf"):
            raise ValueError(f"max_queue_delay_ms must be a finite number >= 0, got {max_queue_delay_ms!r}")
        if isinstance(max_queue_size, bool) or not isinstance(max_queue_size, int) or max_queue_size < 1:
            raise ValueError(f"max_queue_size must be an int >= 1, got {max_queue_size!r}")
        self._handler = handler
        # An async handler this misses is still fine: its coroutine comes back and is awaited on the loop.
        self._handler_is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__
        )
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = float(max_queue_delay_ms) / 1000.0
        self.max_queue_size = max_queue_size
        self._executor = executor
        self._observer = observer
        self._ids = itertools.count()
        # Created on first use so the batcher can be constructed outside (or before) the loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[_Request[T, R]] | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._in_flight = 0  # pass-through mode: calls not yet finished
        self._closing = False
        self._batches = 0
        self._requests = 0
        self._failed_batches = 0
        self._deadline_dropped = 0
        self._cancelled = 0

    @classmethod
    def configured(
        cls,
        handler: BatchHandler[T, R],
        config: BatchingConfig | None,
        *,
        executor: Executor | None = None,
        observer: BatchObserver | None = None,
    ) -> DynamicBatcher[T, R] | None:
        """A batcher as a profile's ``[model.batching]`` sets it up; None when batching is off."""
        if config is None or not config.enabled:
            return None
        return cls(
            handler,
            max_batch_size=config.max_batch_size,
            max_queue_delay_ms=config.max_queue_delay_ms,
            max_queue_size=config.max_queue_size,
            executor=executor,
            observer=observer,
        )

    @property
    def passthrough(self) -> bool:
        return self.max_batch_size == 1

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (pass-through: calls in flight)."""
        if self.passthrough:
            return self._in_flight
        return len(self._pending) if self._pending is not None else 0

    def stats(self) -> BatcherStats:
        return BatcherStats(
            batches=self._batches,
            requests=self._requests,
            failed_batches=self._failed_batches,
            deadline_dropped=self._deadline_dropped,
            cancelled=self._cancelled,
        )

    async def submit(self, item: T, deadline: float | None = None, *, request_id: Hashable = None) -> R:
        """Score ``item`` in some batch and return its own result.

        ``deadline`` is an absolute ``loop.time()``: once passed, the request is dropped before
        execution with :class:`DeadlineDropped`. Raises :class:`QueueFull` at once when
        ``max_queue_size`` requests already wait, and :class:`BatcherClosed` after :meth:`close`.
        """
        loop = self._bind_loop()
        if self._closing:
            raise BatcherClosed("batcher is closed")
        if deadline is not None and loop.time() >= deadline:
            self._deadline_dropped += 1
            raise DeadlineDropped("deadline passed before the request was queued")
        rid: Hashable = next(self._ids) if request_id is None else request_id
        if self.passthrough:
            return await self._call_direct(loop, item, deadline, rid)

        assert self._pending is not None and self._wakeup is not None
        if len(self._pending) >= self.max_queue_size:
            raise QueueFull(f"batch queue full ({self.max_queue_size} requests waiting)")
        request: _Request[T, R] = _Request(item, loop.create_future(), deadline, loop.time(), rid)
        self._pending.append(request)
        self._wakeup.set()
        if self._worker is None:
            self._worker = loop.create_task(self._run(), name="unirank-batcher")
        try:
            # Not shielded on purpose: a cancelled caller cancels its future, which the worker
            # sees and skips.
            return await request.future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self._pending.remove(request)  # frees its queue slot now rather than at formation
                self._cancelled += 1
            raise

    async def close(self, drain: bool = True) -> None:
        """Stop accepting requests; run what waits (``drain``) or fail it with :class:`BatcherClosed`.

        A batch already executing always finishes. Safe to call more than once.
        """
        self._closing = True
        if self._pending is not None and not drain:
            self._fail_all_pending(BatcherClosed("batcher closed before the request ran"))
        if self._wakeup is not None:
            self._wakeup.set()
        worker = self._worker
        if worker is not None and not worker.done():
            await asyncio.shield(worker)

    # -- internals ---------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._pending = deque()
            self._wakeup = asyncio.Event()
        elif self._loop is not loop:
            raise RuntimeError("DynamicBatcher is bound to another event loop")
        return loop

    async def _call_direct(
        self, loop: asyncio.AbstractEventLoop, item: T, deadline: float | None, rid: Hashable
    ) -> R:
        if self._in_flight >= self.max_queue_size:
            raise QueueFull(f"too many requests in flight ({self.max_queue_size})")
        self._in_flight += 1
        started = loop.time()
        try:
            results = await self._invoke([item])
        except asyncio.CancelledError:
            self._cancelled += 1
            raise
        except Exception as exc:
            self._record(BatchInfo(1, (rid,), (0.0,), started, loop.time() - started, exc))
            raise
        finally:
            self._in_flight -= 1
        self._record(BatchInfo(1, (rid,), (0.0,), started, loop.time() - started, None))
        return results[0]

    async def _invoke(self, items: list[T]) -> Sequence[R]:
        """Call the handler off the event loop (sync handlers) and check the result's length."""
        if self._handler_is_async:
            results: Any = await cast(Callable[[list[T]], Awaitable[Sequence[R]]], self._handler)(items)
        else:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._executor, self._handler, items)
            if inspect.isawaitable(results):
                results = await results
        try:
            count = len(results)
        except TypeError:
            raise BadBatchResult(f"batch handler returned {type(results).__name__}, not a list") from None
        if count != len(items):
            raise BadBatchResult(f"batch handler returned {count} results for a batch of {len(items)}")
        return cast(Sequence[R], results)

    async def _run(self) -> None:
        assert self._pending is not None and self._wakeup is not None and self._loop is not None
        pending, wakeup, loop = self._pending, self._wakeup, self._loop
        try:
            while True:
                while not pending:
                    if self._closing:
                        return
                    wakeup.clear()
                    await wakeup.wait()
                # The oldest member sets the clock: it never waits longer than max_queue_delay.
                close_at = pending[0].enqueued_at + self.max_queue_delay_s
                while len(pending) < self.max_batch_size and not self._closing:
                    remaining = close_at - loop.time()
                    if remaining <= 0:
                        break
                    wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), remaining)
                    if not pending:  # every waiter cancelled
                        break
                batch = self._form_batch(loop)
                if batch:
                    await self._execute(loop, batch)
        except BaseException as exc:
            # Never leave a caller waiting on a future nobody will resolve, now or later.
            self._closing = True
            self._fail_all_pending(BatcherClosed(f"batcher stopped: {exc!r}"))
            if not isinstance(exc, asyncio.CancelledError):
                logger.exception("dynamic batcher worker crashed")
            raise

    def _form_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Request[T, R]]:
        assert self._pending is not None
        now = loop.time()
        batch: list[_Request[T, R]] = []
        while self._pending and len(batch) < self.max_batch_size:
            request = self._pending.popleft()
            if request.future.done():  # cancelled by its caller after it was queued
                self._cancelled += 1
                continue
            if request.deadline is not None and now >= request.deadline:
                self._deadline_dropped += 1
                request.future.set_exception(
                    DeadlineDropped(
                        f"deadline passed after {now - request.enqueued_at:.4f}s in the batch queue"
                    )
                )
                continue
            batch.append(request)
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Request[T, R]]) -> None:
        started = loop.time()
        waits = tuple(started - r.enqueued_at for r in batch)
        error: BaseException | None = None
        try:
            results = await self._invoke([r.item for r in batch])
        except BaseException as exc:
            # One failure answers every member; the handler cannot tell whose input was at fault.
            error = exc if isinstance(exc, Exception) else BatcherClosed(f"batcher stopped: {exc!r}")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        else:
            for request, result in zip(batch, results, strict=True):
                if request.future.done():  # the caller may have been cancelled meanwhile
                    continue
                if isinstance(result, MemberFailed):
                    request.future.set_exception(result.error)
                else:
                    request.future.set_result(result)
        finally:
            ids = tuple(r.request_id for r in batch)
            self._record(BatchInfo(len(batch), ids, waits, started, loop.time() - started, error))

    def _record(self, info: BatchInfo) -> None:
        self._batches += 1
        self._requests += info.size
        if info.error is not None:
            self._failed_batches += 1
        self._observe(info)

    def _observe(self, info: BatchInfo) -> None:
        if self._observer is None:
            return
        try:
            self._observer(info)
        except Exception:
            # Telemetry must never fail a request.
            logger.exception("batch observer failed")

    def _fail_all_pending(self, error: BatchingError) -> None:
        if self._pending is None:
            return
        while self._pending:
            request = self._pending.popleft()
            if not request.future.done():
                request.future.set_exception(error)
