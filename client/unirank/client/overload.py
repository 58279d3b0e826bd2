"""Client-side overload control: adaptive throttling and an adaptive concurrency limit.

Both refuse a call locally, before it costs the server anything, with RESOURCE_EXHAUSTED and the
reason ``THROTTLED_LOCALLY``. The throttle reacts to the server's refusals (it keeps sending about
K times what is accepted); the concurrency limit reacts to latency, so the server is kept near
its unloaded latency before it refuses anything. The clients use both through
:class:`OverloadControl`.
"""

from __future__ import annotations

import collections
import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from unirank.client.errors import UniRankError
from unirank.v1 import recommender_pb2 as pb

DEFAULT_THROTTLE_K = 2.0
"""Adaptive throttling's K: a client sends up to K times what the server has been accepting."""

THROTTLED_LOCALLY = "THROTTLED_LOCALLY"
"""``UniRankError.reason`` of a call the client refused itself, without sending it."""

_OVERLOAD_CODES = frozenset(
    {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
"""Answers that mean the server did not serve the call in time: refused by admission or by gRPC's
own limit, dropped from gRPC core's backlog (a blocking or aio call this client makes is never
cancelled by the client itself with an RpcError), or still waiting when the deadline passed (an
overloaded process holds calls in gRPC core's backlog, where nothing refuses them, until they
time out: make stress measured 50 ms callers getting 3 % of the answers without this)."""


class AdaptiveThrottle:
    """Client-side adaptive throttling, as in the Google SRE book's "Handling Overload".

    Over a sliding window (``window_s``, kept in ``buckets`` buckets) the client counts the calls
    it was asked to make (``requests``) and those the server accepted (any answer but an overload
    refusal or a deadline that passed). A new call is refused locally, without being sent, with probability
    ``max(0, (requests - k * accepts) / (requests + 1))``: while the server accepts everything
    nothing is refused; once it refuses, the client sends about ``k`` times what it accepts, so
    the server spends little CPU refusing calls it could never answer. Thread-safe.
    """

    def __init__(
        self,
        k: float = DEFAULT_THROTTLE_K,
        *,
        window_s: float = 120.0,
        buckets: int = 60,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not k > 0:
            raise ValueError(f"k must be > 0, got {k}")
        if not window_s > 0 or buckets < 1:
            raise ValueError(f"window_s must be > 0 and buckets >= 1, got {window_s}, {buckets}")
        self.k = k
        self._bucket_s = window_s / buckets
        self._buckets = buckets
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._window: collections.deque[list[int]] = collections.deque()  # [bucket, requests, accepts]
        self.requests = 0
        """Calls asked for within the window (sent or refused locally)."""
        self.accepts = 0
        """Calls the server accepted within the window."""
        self.rejected_locally = 0
        """Calls refused by this throttle since it was made (never reset)."""

    def _bucket(self) -> list[int]:
        index = int(self._clock() // self._bucket_s)
        window = self._window
        while window and window[0][0] <= index - self._buckets:
            _, requests, accepts = window.popleft()
            self.requests -= requests
            self.accepts -= accepts
        if not window or window[-1][0] != index:
            window.append([index, 0, 0])
        return window[-1]

    def rejection_probability(self) -> float:
        """The chance that the next call is refused locally."""
        with self._lock:
            self._bucket()
            return max(0.0, (self.requests - self.k * self.accepts) / (self.requests + 1))

    def admit(self) -> bool:
        """Decide whether to send a call (False: it is refused locally, and counted as a request)."""
        with self._lock:
            bucket = self._bucket()
            p = (self.requests - self.k * self.accepts) / (self.requests + 1)
            if p > 0 and self._rng.random() < p:
                bucket[1] += 1
                self.requests += 1
                self.rejected_locally += 1
                return False
            return True

    def record(self, code: grpc.StatusCode | None) -> None:
        """A sent call ended with ``code`` (None: OK); overload refusals and timeouts are not accepts.

        A sent call is counted when its outcome is known, not when it leaves: calls still in
        flight would otherwise count as refused, and a burst of concurrent first calls would be
        throttled before the server ever said no.
        """
        accepted = code not in _OVERLOAD_CODES
        with self._lock:
            bucket = self._bucket()
            bucket[1] += 1
            self.requests += 1
            if accepted:
                bucket[2] += 1
                self.accepts += 1

    def refusal(self) -> UniRankError:
        """The error of a call refused locally."""
        return UniRankError(
            grpc.StatusCode.RESOURCE_EXHAUSTED.name,
            f"throttled locally: the server accepted {self.accepts} of the last {self.requests} "
            f"calls, and this client sends at most {self.k:g} times what it accepts",
            reason=THROTTLED_LOCALLY,
        )


def make_throttle(throttle_k: float | None) -> AdaptiveThrottle | None:
    """The client's throttle; None (no throttling) when ``throttle_k`` is None."""
    return None if throttle_k is None else AdaptiveThrottle(throttle_k)


class AdaptiveConcurrencyLimit:
    """A latency-driven limit on the calls this client has in flight (TCP Vegas, as in Netflix's
    concurrency-limits and Envoy's adaptive concurrency filter).

    Each answered call is one sample: its round trip ``rtt`` against the fastest round trip seen
    for calls of its kind (``rtt_noload``, kept per use-case, since a search costs more than a
    notification). ``limit * (1 - rtt_noload / rtt)`` estimates how many of this client's calls
    are waiting at the server rather than being served. Below ``alpha`` the limit grows by about
    one per round trip, above ``beta`` it shrinks as much; a call the server refused for overload
    or that ran past its deadline cuts it by ``backoff``. A call made while ``limit`` calls are in
    flight is refused at once. So under any offered load the server holds about ``alpha`` to
    ``beta`` of this client's calls beyond those it is serving, and its latency stays near the
    unloaded one; the excess is refused here for nothing.

    ``rtt_noload`` may rise by ``noload_drift_per_s`` (relative) per second, so a server that
    became slower for good (a bigger model) is learned within a minute or two instead of being
    read as queueing forever. Thread-safe; shared by the calls of one client.
    """

    def __init__(
        self,
        initial: int = 8,
        *,
        min_limit: int = 1,
        max_limit: int = 512,
        alpha: float = 1.0,
        beta: float = 3.0,
        backoff: float = 0.9,
        noload_drift_per_s: float = 0.01,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 1 <= min_limit <= initial <= max_limit:
            raise ValueError(
                f"need 1 <= min_limit <= initial <= max_limit, got {min_limit}, {initial}, {max_limit}"
            )
        if not 0 <= alpha < beta:
            raise ValueError(f"need 0 <= alpha < beta, got {alpha}, {beta}")
        if not 0 < backoff < 1:
            raise ValueError(f"backoff must be in (0, 1), got {backoff}")
        self.min_limit, self.max_limit = min_limit, max_limit
        self.alpha, self.beta, self.backoff = alpha, beta, backoff
        self.noload_drift_per_s = noload_drift_per_s
        self.clock = clock
        self._lock = threading.Lock()
        self._limit = float(initial)
        self._noload: dict[str, tuple[float, float]] = {}  # kind -> (rtt_noload, when measured)
        self.in_flight = 0
        """Calls sent and not answered yet."""
        self.rejected_locally = 0
        """Calls refused because ``limit`` calls were in flight (never reset)."""

    @property
    def limit(self) -> int:
        """How many calls may be in flight now."""
        return int(self._limit)

    def try_acquire(self) -> bool:
        """Take a slot for a call (False: ``limit`` calls are in flight; the call is refused)."""
        with self._lock:
            if self.in_flight >= int(self._limit):
                self.rejected_locally += 1
                return False
            self.in_flight += 1
            return True

    def release(self, kind: str, rtt_s: float | None, overloaded: bool) -> None:
        """A call of ``kind`` ended after ``rtt_s`` (None: no answer to learn from, e.g. cancelled
        by the caller); ``overloaded``: refused for overload or past its deadline."""
        with self._lock:
            in_flight = self.in_flight
            self.in_flight -= 1
            limit = self._limit
            if overloaded:
                self._limit = max(float(self.min_limit), limit * self.backoff)
                return
            if rtt_s is None or rtt_s <= 0:
                return
            now = self.clock()
            noload, since = self._noload.get(kind, (rtt_s, now))
            noload = min(rtt_s, noload * (1.0 + self.noload_drift_per_s * (now - since)))
            self._noload[kind] = (noload, now)
            queued = limit * (1.0 - noload / rtt_s)
            if queued < self.alpha:
                if 2 * in_flight < limit:
                    return  # the caller, not the server, keeps the limit from being used: no evidence
                self._limit = min(float(self.max_limit), limit + 1.0 / limit)
            elif queued > self.beta:
                self._limit = max(float(self.min_limit), limit - 1.0 / limit)

    def refusal(self) -> UniRankError:
        """The error of a call refused because the limit was reached."""
        return UniRankError(
            grpc.StatusCode.RESOURCE_EXHAUSTED.name,
            f"throttled locally: {self.in_flight} calls in flight reach this client's adaptive "
            f"concurrency limit ({self.limit}); the server's latency says more would only queue",
            reason=THROTTLED_LOCALLY,
        )


def call_kind(request: Any) -> str:
    """What the concurrency limit keeps a no-load round trip for: the message, and the use-case."""
    if isinstance(request, pb.RecommendRequest):
        return f"Recommend/{request.context.WhichOneof('task') or ''}"
    return type(request).__name__


@dataclass
class CallOutcome:
    """How a guarded call ended: set by :meth:`answer` once the server's answer (or error) is in;
    never set for a call cancelled by its caller."""

    answered: bool = False
    code: grpc.StatusCode | None = None

    def answer(self, code: grpc.StatusCode | None) -> None:
        self.answered, self.code = True, code


@dataclass(frozen=True)
class OverloadControl:
    """What a client's ``_call`` runs around each call: the limit first, then the throttle."""

    throttle: AdaptiveThrottle | None
    limit: AdaptiveConcurrencyLimit | None

    def admit(self) -> float:
        """Let a call go (its start time) or raise the local refusal; a limit slot is then held."""
        if self.limit is not None and not self.limit.try_acquire():
            # Not a request for the throttle: it counts what the server was asked and answered.
            raise self.limit.refusal()
        if self.throttle is not None and not self.throttle.admit():
            if self.limit is not None:
                self.limit.release("", None, False)
            raise self.throttle.refusal()
        return time.perf_counter()

    def done(
        self, request: Any, started: float, code: grpc.StatusCode | None, *, answered: bool = True
    ) -> None:
        """The call ended with ``code`` (None: OK); ``answered=False``: it never got an answer
        (cancelled by the caller), so neither learns from it and only the slot is given back."""
        if self.limit is not None:
            rtt = time.perf_counter() - started if answered else None
            self.limit.release(call_kind(request), rtt, answered and code in _OVERLOAD_CODES)
        if self.throttle is not None and answered:
            self.throttle.record(code)

    @contextlib.contextmanager
    def guard(self, request: Any, *, enabled: bool = True) -> Iterator[CallOutcome]:
        """Around one call: admitted (or refused locally) on entry; on exit the limit and the
        throttle learn from the :class:`CallOutcome` the call set, and a call that never got an
        answer (cancelled) only gives its slot back. ``enabled=False``: neither runs."""
        outcome = CallOutcome()
        if not enabled:
            yield outcome
            return
        started = self.admit()
        try:
            yield outcome
        finally:
            self.done(request, started, outcome.code, answered=outcome.answered)
