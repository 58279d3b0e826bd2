"""The one load generator, for ``make bench``, ``make stress`` and the hardening tests.

Closed loop (:func:`closed_loop`): C callers, each sending its next request as soon as the previous
one is answered; after a refusal a caller waits as its RetryInfo asks. Open loop
(:func:`scheduled`): requests leave at a fixed rate whatever the answers do. Every request ends as
an :class:`Outcome` (its code, reason and RetryInfo). Requests are pre-serialized bytes and
answers arrive as bytes (no stub codec on the hot path).

The bench runs these loops in worker processes (:mod:`unirank_bench.loadworkers`); the stress
runner and the tests drive a server from their own event loop (:class:`Load`, :func:`open_loop`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from unirank_bench.servers import UNIRANK_METHOD


@dataclass(slots=True)
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


def refusal(started_s: float, error: Any) -> Outcome:
    """The :class:`Outcome` of a failed call (a ``grpc.aio.AioRpcError``), its RetryInfo read."""
    from unirank.client.errors import error_from_rpc

    failed = error_from_rpc(error)
    return Outcome(
        started_s, time.monotonic(), failed.code, failed.reason, failed.retry_after_s, message=failed.message
    )


async def send_bytes(call: Any, payload: bytes, timeout_s: float) -> tuple[Outcome, bytes]:
    """One request through a bytes-in, bytes-out ``unary_unary`` callable; the answer's bytes
    (empty on failure)."""
    import grpc

    started = time.monotonic()
    try:
        answer = await call(payload, timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        return refusal(started, error), b""
    return Outcome(started, time.monotonic(), "OK"), answer


Send = Callable[[int], Awaitable[tuple[Outcome, bytes]]]
"""One request by caller ``i``: its outcome and the answer's bytes."""


async def closed_loop(
    send: Send,
    callers: int,
    record: Callable[[Outcome, bytes], None],
    keep_going: Callable[[], bool],
    *,
    max_retry_wait_s: float | None = None,
    stop_on_unavailable: bool = False,
    in_flight: list[int] | None = None,
) -> None:
    """``callers`` callers, each sending its next request once the last is answered, while
    ``keep_going()``; ``record`` sees every outcome.

    A well-behaved caller waits as long as a refusal's RetryInfo asks (at most
    ``max_retry_wait_s``; 0: not at all) before its next request; without that it would spin on
    refusals and load the server with them. With ``stop_on_unavailable`` a caller stops at its
    first UNAVAILABLE (a real client fails over to another replica then). ``in_flight[0]`` counts
    the requests outstanding.
    """
    count = in_flight if in_flight is not None else [0]

    async def caller(index: int) -> None:
        while keep_going():
            count[0] += 1
            try:
                outcome, answer = await send(index)
            finally:
                count[0] -= 1
            record(outcome, answer)
            if stop_on_unavailable and outcome.code == "UNAVAILABLE":
                return
            delay = outcome.retry_after_s
            if delay and max_retry_wait_s != 0:
                await asyncio.sleep(delay if max_retry_wait_s is None else min(delay, max_retry_wait_s))

    await asyncio.gather(*(caller(i) for i in range(callers)))


async def scheduled(
    rate: float,
    first_s: float,
    stop: Callable[[int, float], bool],
    launch: Callable[[int, float], Awaitable[None]],
    *,
    max_outstanding: int | None = None,
    drain_s: float | None = None,
    after_sending: Callable[[], object] | None = None,
) -> tuple[int, list[float], float]:
    """Open loop: request ``n`` leaves at ``first_s + n / rate`` (``time.monotonic()``) whatever
    the answers do, until ``stop(n, when)``; ``launch(n, when)`` sends it.

    A request due while ``max_outstanding`` are in flight is not sent. Once the last is sent,
    ``after_sending()`` runs and the answers are awaited (at most ``drain_s``; None: all).
    Returns how many were scheduled, the times of those not sent, and when sending ended.
    """
    pending: set[asyncio.Task[None]] = set()
    skipped: list[float] = []
    index = 0
    while not stop(index, when := first_s + index / rate):
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if max_outstanding is not None and len(pending) >= max_outstanding:
            skipped.append(when)
        else:
            task = asyncio.create_task(launch(index, when))
            pending.add(task)
            task.add_done_callback(pending.discard)
        index += 1
    sent_s = time.monotonic()
    if after_sending is not None:
        after_sending()
    if pending and drain_s is None:
        await asyncio.gather(*pending)
    elif pending:
        await asyncio.wait(pending, timeout=drain_s)
    return index, skipped, sent_s


def related_items_request(anchor_item_id: str) -> bytes:
    """A serialized related-items request (the load the stress runner and the tests send)."""
    from unirank.v1 import recommender_pb2 as pb

    request = pb.RecommendRequest()
    request.context.related_items.anchor_item_id = anchor_item_id
    return request.SerializeToString()


def _with_fallback(outcome: Outcome, answer: bytes) -> Outcome:
    if outcome.code == "OK":
        from unirank.v1 import recommender_pb2 as pb

        outcome.fallback = pb.RecommendResponse.FromString(answer).fallback
    return outcome


@dataclass
class Load:
    """Closed-loop callers sending one related-items request over one channel, each stopping at
    its first UNAVAILABLE; every :class:`Outcome` kept."""

    address: str
    anchor_item_id: str
    callers: int
    outcomes: list[Outcome] = field(default_factory=list)
    _in_flight: list[int] = field(default_factory=lambda: [0])

    @property
    def in_flight(self) -> int:
        return self._in_flight[0]

    async def run(self, duration_s: float | None = None) -> None:
        """Until ``duration_s`` has passed (None: until every caller has stopped)."""
        until = None if duration_s is None else time.monotonic() + duration_s
        await self._run(
            lambda: until is None or time.monotonic() < until, stop_on_unavailable=True, max_retry_wait_s=None
        )

    async def run_count(self, requests: int) -> None:
        """Send ``requests`` requests in all, ``callers`` at a time, none held back by a refusal."""
        left = [requests]

        def take() -> bool:
            left[0] -= 1
            return left[0] >= 0

        await self._run(take, stop_on_unavailable=False, max_retry_wait_s=0)

    async def _run(self, keep_going: Callable[[], bool], **policy: Any) -> None:
        import grpc

        payload = related_items_request(self.anchor_item_id)
        async with grpc.aio.insecure_channel(self.address) as channel:
            call = channel.unary_unary(UNIRANK_METHOD)
            await closed_loop(
                lambda _: send_bytes(call, payload, 30.0),
                self.callers,
                lambda outcome, answer: self.outcomes.append(_with_fallback(outcome, answer)),
                keep_going,
                in_flight=self._in_flight,
                **policy,
            )


async def open_loop(
    address: str, anchor_item_id: str, rate: float, duration_s: float
) -> tuple[list[Outcome], float]:
    """Send related-items requests at ``rate``/s whatever the answers do, so overload is not hidden
    by a client that waits. Returns every outcome and the rate actually achieved (the sender may
    fall behind on a small machine)."""
    import grpc

    outcomes: list[Outcome] = []
    total = int(rate * duration_s)
    payload = related_items_request(anchor_item_id)
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(UNIRANK_METHOD)

        async def one(index: int, when: float) -> None:
            outcomes.append(_with_fallback(*await send_bytes(call, payload, 30.0)))

        begin = time.monotonic()
        _, _, sent_s = await scheduled(rate, begin, lambda index, when: index >= total, one)
    return outcomes, total / (sent_s - begin)
