"""The adaptive concurrency limit (TCP Vegas on round trips), against a simulated one-core server:
no server process, no wall clock."""

from __future__ import annotations

import heapq

import grpc
import pytest

from unirank.client import (
    THROTTLED_LOCALLY,
    AdaptiveConcurrencyLimit,
    AdaptiveThrottle,
    RecommenderClient,
    UniRankError,
)
from unirank.client.overload import OverloadControl, call_kind
from unirank.v1 import recommender_pb2 as pb


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _simulate(
    limit: AdaptiveConcurrencyLimit | None, clock: _Clock, *, overload: float, seconds: float = 20.0
) -> tuple[float, list[float], int]:
    """Open-loop arrivals at ``overload`` x the capacity of a FIFO server with 1 ms of work per
    call and 0.3 ms on the wire; answers per second, their round trips, calls refused locally."""
    service, wire = 0.001, 0.0003
    interval = service / overload
    server_free = 0.0
    ends: list[tuple[float, float]] = []  # (answer time, start time)
    rtts: list[float] = []
    refused = 0
    t = 0.0
    while t < seconds:
        while ends and ends[0][0] <= t:
            end, start = heapq.heappop(ends)
            clock.now = end
            rtts.append(end - start)
            if limit is not None:
                limit.release("Recommend/notification", end - start, False)
        clock.now = t
        if limit is None or limit.try_acquire():
            begin = max(t + wire / 2, server_free)
            server_free = begin + service
            heapq.heappush(ends, (server_free + wire / 2, t))
        else:
            refused += 1
        t += interval
    # Judge the second half: the limit has settled by then.
    settled = rtts[len(rtts) // 2 :]
    return len(rtts) / seconds, sorted(settled), refused


def test_under_4x_overload_the_server_answers_near_capacity_at_near_unloaded_latency() -> None:
    clock = _Clock()
    limit = AdaptiveConcurrencyLimit(clock=clock)
    answered, rtts, refused = _simulate(limit, clock, overload=4.0)
    unloaded = 0.0013
    p99 = rtts[int(0.99 * (len(rtts) - 1))]
    assert answered >= 0.85 * 1000, answered
    assert p99 <= 3 * unloaded, p99
    assert refused > 0 and limit.rejected_locally == refused
    assert limit.in_flight <= limit.limit + 1


def test_without_the_limit_the_same_overload_queues_without_bound() -> None:
    # The simulation's own control: what the limit removes is real in it.
    _, rtts, _ = _simulate(None, _Clock(), overload=4.0, seconds=2.0)
    assert rtts[-1] > 100 * 0.0013


def test_a_light_load_is_never_refused_and_the_limit_does_not_grow_without_evidence() -> None:
    clock = _Clock()
    limit = AdaptiveConcurrencyLimit(initial=8, clock=clock)
    answered, _, refused = _simulate(limit, clock, overload=0.3, seconds=5.0)
    assert refused == 0 and answered > 250
    assert limit.limit <= 8  # one call in flight at a time is no reason to allow more


def test_an_overload_refusal_or_a_missed_deadline_cuts_the_limit() -> None:
    limit = AdaptiveConcurrencyLimit(initial=100, backoff=0.5)
    assert limit.try_acquire()
    limit.release("k", 0.01, True)
    assert limit.limit == 50 and limit.in_flight == 0


def test_a_call_at_the_limit_is_refused_as_resource_exhausted_throttled_locally() -> None:
    limit = AdaptiveConcurrencyLimit(initial=2, min_limit=1)
    assert limit.try_acquire() and limit.try_acquire()
    assert not limit.try_acquire()
    error = limit.refusal()
    assert (error.code, error.reason) == ("RESOURCE_EXHAUSTED", THROTTLED_LOCALLY)
    assert limit.rejected_locally == 1


def test_the_no_load_round_trip_is_kept_per_use_case() -> None:
    # A search twice as slow as a notification is not read as queueing.
    limit = AdaptiveConcurrencyLimit(initial=4, max_limit=64)
    for _ in range(200):
        for kind, rtt in (("Recommend/notification", 0.001), ("Recommend/search", 0.002)):
            for _ in range(4):
                assert limit.try_acquire()
            for _ in range(4):
                limit.release(kind, rtt, False)
    assert limit.limit > 4
    notification = pb.RecommendRequest(context=pb.RequestContext(notification=pb.NotificationContext()))
    assert call_kind(notification) == "Recommend/notification"
    assert call_kind(pb.GetModelInfoRequest()) == "GetModelInfoRequest"


def test_a_call_the_limit_refuses_is_not_a_request_for_the_throttle() -> None:
    throttle = AdaptiveThrottle(2.0)
    control = OverloadControl(throttle, AdaptiveConcurrencyLimit(initial=1))
    request = pb.GetModelInfoRequest()
    started = control.admit()
    with pytest.raises(Exception) as refused:
        control.admit()
    assert getattr(refused.value, "reason", None) == THROTTLED_LOCALLY
    control.done(request, started, grpc.StatusCode.OK)
    assert throttle.requests == 1 and throttle.accepts == 1
    started = control.admit()  # the slot came back
    control.done(request, started, None, answered=False)
    assert control.limit is not None and control.limit.in_flight == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"min_limit": 5, "initial": 4}, {"alpha": 4.0, "beta": 2.0}, {"backoff": 1.0}],
)
def test_bad_knobs_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdaptiveConcurrencyLimit(**kwargs)  # type: ignore[arg-type]


def test_the_blocking_client_gives_its_slot_back_whatever_the_outcome() -> None:
    # Nothing listens there: UNAVAILABLE is not overload, so the limit keeps its size.
    limit = AdaptiveConcurrencyLimit(initial=2)
    with RecommenderClient("127.0.0.1:1", timeout=0.5, concurrency_limit=limit) as client:
        for _ in range(3):
            with pytest.raises(UniRankError) as error:
                client.model_info()
            assert error.value.code == "UNAVAILABLE"
    assert limit.in_flight == 0 and limit.limit == 2 and limit.rejected_locally == 0
