"""Admission control: execution slots for RPCs, a bounded FIFO of callers waiting for one,
deadline-aware refusal, and draining. Transport-neutral: the interceptor admits each RPC, the
pipeline admits each RecommendBatch member (through the ``AdmissionGate`` protocol)."""

from __future__ import annotations

import asyncio
import collections
import contextlib

from unirank.server.errors import Draining, Overloaded

SERVICE_TIME_WEIGHT = 0.1
"""Weight of the newest call in a use-case's expected service time (an EWMA: ~20 calls to follow a
change), which deadline-aware admission compares with each call's remaining deadline."""


class OpenCalls:
    """Calls open in the server now, counted by the transport from the moment a call's handler
    starts (before its request message has arrived) until it ends.

    It is what tells a call that is alone from one among others: admission and the pipeline
    count a call only once the event loop has reached it, and a loop that never suspends before
    the model call reaches each of 32 concurrent calls alone in turn. Open calls are counted from
    their handler's start, so calls waiting for their message or for the loop count each other.
    Calls gRPC core holds before the server takes them up are not counted.
    """

    def __init__(self) -> None:
        self.count = 0

    def alone(self) -> bool:
        """At most one call is open (the caller's own, or none for the server's own calls)."""
        return self.count <= 1


class Admission:
    """Execution slots for RPCs, a bounded FIFO of callers waiting for one, and draining.

    ``max_in_flight`` RPCs run at once. With ``max_queued`` > 0, callers past that wait in arrival
    order for a slot, at most ``max_queued`` of them and each at most ``max_wait_s`` (0: until a
    slot frees or the call ends); anyone past those bounds is refused with RESOURCE_EXHAUSTED and
    RetryInfo. The bounds keep both memory and the latency of admitted calls bounded under
    overload, while short bursts queue instead of failing.
    """

    def __init__(
        self,
        max_in_flight: int,
        max_queued: int = 0,
        max_wait_s: float = 0.0,
        *,
        service_time_weight: float = SERVICE_TIME_WEIGHT,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.max_wait_s = max_wait_s
        self.in_flight = 0
        self.draining = False
        self.arrivals = 0
        """RPCs that reached admission so far, admitted or not (draining watches it settle)."""
        self.refused_for_deadline = 0
        """Calls refused because their deadline was shorter than their use-case's service time."""
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._weight = service_time_weight
        self._service_s: dict[str, float] = {}

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def saturated(self) -> bool:
        """Whether the next call would be refused at once (draining, every slot and place taken)."""
        return self.draining or (
            self.in_flight >= self.max_in_flight and len(self._waiters) >= self.max_queued
        )

    def expected_service_s(self, task: str) -> float:
        """The use-case's expected service time: an EWMA of its recent admitted calls (0 before any)."""
        return self._service_s.get(task, 0.0)

    def served(self, task: str, seconds: float) -> None:
        """An admitted call of ``task`` was answered ``seconds`` after it took its slot."""
        previous = self._service_s.get(task)
        self._service_s[task] = (
            seconds if previous is None else previous + self._weight * (seconds - previous)
        )

    def _check_deadline(self, task: str, remaining_s: float | None) -> None:
        """Refuse a call that would die in the queue or the model: its deadline is shorter than
        the time its use-case takes now. Only while other calls run: an idle server always tries
        (and its answer brings the estimate back down once the load has gone)."""
        if remaining_s is None or not self.in_flight:
            return
        expected = self._service_s.get(task, 0.0)
        if remaining_s < expected:
            self.refused_for_deadline += 1
            raise Overloaded(
                f"{max(remaining_s, 0.0) * 1e3:.0f} ms left before the call's deadline, less than the "
                f"{expected * 1e3:.0f} ms {task or 'a call'} takes now"
            )

    async def enter(self, task: str = "", remaining_s: float | None = None) -> None:
        """Take a slot, waiting in line for one where the profile allows; Overloaded / Draining otherwise.

        ``remaining_s`` (the call's deadline, from now) is checked against ``task``'s expected
        service time on arrival and again when a slot is handed over after waiting.
        """
        self.arrivals += 1
        if self.draining:
            raise Draining()
        self._check_deadline(task, remaining_s)
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.max_queued:
            raise Overloaded(
                f"{self.in_flight} requests in flight and {len(self._waiters)} waiting, "
                f"limits {self.max_in_flight} and {self.max_queued}"
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        queued_at = loop.time()
        try:
            if self.max_wait_s > 0:
                async with asyncio.timeout(self.max_wait_s):
                    await waiter
            else:
                await waiter
        except TimeoutError:
            self._abandon(waiter)
            raise Overloaded(
                f"waited {self.max_wait_s * 1e3:.0f} ms for one of {self.max_in_flight} slots "
                "(server.max_queue_wait_ms)"
            ) from None
        except BaseException:
            self._abandon(waiter)
            raise
        # The slot was handed over by exit(): in_flight already counts it.
        if remaining_s is not None:
            try:
                self._check_deadline(task, remaining_s - (loop.time() - queued_at))
            except Overloaded:
                self.exit()
                raise

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.exit()  # a slot reached us as we gave up: pass it on
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):  # still in line (exit() and drain() pop theirs)
            self._waiters.remove(waiter)

    def exit(self) -> None:
        """Release a slot: straight to the longest waiter if there is one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1

    def drain(self) -> None:
        """Refuse new calls and every waiting one (UNAVAILABLE, DRAINING): only admitted calls finish."""
        self.draining = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Draining())
