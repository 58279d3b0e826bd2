"""Client-side adaptive throttling (Google SRE book, "Handling Overload"), with a fake clock and a
seeded random source: no server, no wall clock."""

from __future__ import annotations

import random

import grpc
import pytest

from unirank.client import THROTTLED_LOCALLY, AdaptiveThrottle, RecommenderClient

OVERLOAD = grpc.StatusCode.RESOURCE_EXHAUSTED


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(k: float = 2.0, seed: int = 7) -> tuple[AdaptiveThrottle, _Clock]:
    clock = _Clock()
    return AdaptiveThrottle(k, window_s=120.0, buckets=60, clock=clock, rng=random.Random(seed)), clock


def test_calls_in_flight_are_not_refusals() -> None:
    # A burst of concurrent first calls: none answered yet, none refused by the server.
    throttle, _ = _throttle()
    assert all(throttle.admit() for _ in range(100))
    assert throttle.rejected_locally == 0


def test_nothing_is_refused_while_the_server_accepts_everything() -> None:
    throttle, _ = _throttle()
    for _ in range(1000):
        assert throttle.admit()
        throttle.record(None)
    assert throttle.rejected_locally == 0 and throttle.rejection_probability() == 0.0


def test_other_errors_are_accepts_only_overload_refusals_are_not() -> None:
    throttle, _ = _throttle()
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
        throttle.admit()
        throttle.record(code)
    throttle.admit()
    throttle.record(OVERLOAD)
    throttle.admit()
    throttle.record(grpc.StatusCode.CANCELLED)  # dropped from gRPC core's backlog
    throttle.admit()
    throttle.record(grpc.StatusCode.DEADLINE_EXCEEDED)  # held in that backlog until too late
    assert (throttle.requests, throttle.accepts) == (6, 3)


def test_a_refusing_server_gets_about_k_times_what_it_accepts() -> None:
    throttle, clock = _throttle(k=2.0)
    sent = accepted = 0
    credit = 0.0
    for _ in range(20_000):
        clock.now += 0.001  # 1,000 calls a second, 20 s: all inside the 2-minute window
        credit += 0.25  # the server can take a quarter of that: 250 calls a second
        if not throttle.admit():
            continue
        sent += 1
        if credit >= 1.0:
            credit -= 1.0
            accepted += 1
            throttle.record(None)
        else:
            throttle.record(OVERLOAD)
    # The server accepted what it could (~5,000) and was sent ~K = 2 times that, not 20,000.
    assert accepted == pytest.approx(5000, rel=0.05)
    assert sent / accepted == pytest.approx(2.0, rel=0.1)
    assert throttle.rejected_locally == 20_000 - sent
    p = throttle.rejection_probability()
    assert p == pytest.approx((throttle.requests - 2 * throttle.accepts) / (throttle.requests + 1))


def test_the_formula_with_exact_counts() -> None:
    throttle, _ = _throttle(k=1.5)
    for _ in range(10):
        throttle.record(OVERLOAD)
    for _ in range(4):
        throttle.record(None)
    # 14 requests, 4 accepts: max(0, (14 - 1.5 * 4) / 15)
    assert throttle.rejection_probability() == pytest.approx(8 / 15)


def test_the_window_slides_so_recovery_is_seen() -> None:
    throttle, clock = _throttle()
    for _ in range(100):
        throttle.record(OVERLOAD)
    assert throttle.rejection_probability() > 0.9
    clock.now += 60.0  # still inside the window
    assert throttle.rejection_probability() > 0.9
    clock.now += 61.0  # the refusals fell out of the 2-minute window
    assert throttle.rejection_probability() == 0.0 and throttle.requests == 0


def test_same_seed_same_decisions() -> None:
    def decisions(seed: int) -> list[bool]:
        throttle, _ = _throttle(seed=seed)
        out = []
        for _ in range(200):
            allowed = throttle.admit()
            out.append(allowed)
            if allowed:
                throttle.record(OVERLOAD)
        return out

    assert decisions(3) == decisions(3)
    assert sum(decisions(3)) < 200


def test_a_throttled_call_is_refused_locally_without_being_sent() -> None:
    # Nothing listens on this port: a call that were sent would fail UNAVAILABLE, not this.
    with RecommenderClient("127.0.0.1:9", timeout=1) as client:
        throttle = client.throttle
        assert throttle is not None and throttle.k == 2.0  # on by default
        for _ in range(50):
            throttle.record(OVERLOAD)
        refused, before = 0, throttle.rejected_locally
        for _ in range(20):
            try:
                client.search("space")
            except Exception as error:
                code, reason = getattr(error, "code", ""), getattr(error, "reason", "")
                if reason == THROTTLED_LOCALLY:
                    assert code == "RESOURCE_EXHAUSTED" and "throttled locally" in str(error)
                    refused += 1
        assert refused > 10 and throttle.rejected_locally - before == refused
    with RecommenderClient("127.0.0.1:9", throttle_k=None) as naive:
        assert naive.throttle is None


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="k must be > 0"):
        AdaptiveThrottle(0)
