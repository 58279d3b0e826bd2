"""Admission: execution slots, a bounded first-come-first-served line for them, and draining."""

from __future__ import annotations

import asyncio

import pytest

from unirank.server.admission import Admission
from unirank.server.errors import Draining, Overloaded


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_slots_then_a_bounded_line_then_refusal() -> None:
    admission = Admission(max_in_flight=2, max_queued=2)
    await admission.enter()
    await admission.enter()
    assert admission.in_flight == 2 and not admission.saturated
    waiting = [asyncio.create_task(admission.enter()) for _ in range(2)]
    await _settle()
    assert admission.queued == 2 and admission.saturated
    with pytest.raises(Overloaded, match="2 waiting"):
        await admission.enter()
    # A freed slot goes to the longest waiter, never to a newcomer.
    admission.exit()
    await _settle()
    assert waiting[0].done() and not waiting[1].done()
    assert admission.in_flight == 2 and admission.queued == 1
    admission.exit()
    await _settle()
    assert waiting[1].done()
    for _ in range(2):
        admission.exit()
    assert admission.in_flight == 0 and admission.queued == 0


async def test_first_come_first_served() -> None:
    admission = Admission(max_in_flight=1, max_queued=10)
    await admission.enter()
    order: list[int] = []

    async def caller(index: int) -> None:
        await admission.enter()
        order.append(index)

    tasks = [asyncio.create_task(caller(i)) for i in range(5)]
    await _settle()
    for _ in range(5):
        admission.exit()
        await _settle()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_a_caller_waits_at_most_the_queue_wait() -> None:
    admission = Admission(max_in_flight=1, max_queued=4, max_wait_s=0.02)
    await admission.enter()
    with pytest.raises(Overloaded, match="waited 20 ms"):
        await admission.enter()
    assert admission.queued == 0 and admission.in_flight == 1
    admission.exit()
    assert admission.in_flight == 0


async def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    admission = Admission(max_in_flight=1, max_queued=4)
    await admission.enter()
    gone = asyncio.create_task(admission.enter())
    await _settle()
    gone.cancel()
    await _settle()
    assert admission.queued == 0
    admission.exit()
    assert admission.in_flight == 0


async def test_a_slot_handed_to_a_caller_that_just_gave_up_is_passed_on() -> None:
    admission = Admission(max_in_flight=1, max_queued=4)
    await admission.enter()
    first = asyncio.create_task(admission.enter())
    second = asyncio.create_task(admission.enter())
    await _settle()
    admission.exit()  # hands the slot to ``first`` ...
    first.cancel()  # ... which is cancelled before it runs again
    await _settle()
    assert first.cancelled() and second.done() and admission.in_flight == 1
    admission.exit()
    assert admission.in_flight == 0


async def test_draining_refuses_newcomers_and_everyone_waiting() -> None:
    admission = Admission(max_in_flight=1, max_queued=4)
    await admission.enter()
    waiting = asyncio.create_task(admission.enter())
    await _settle()
    admission.drain()
    with pytest.raises(Draining):
        await waiting
    with pytest.raises(Draining):
        await admission.enter()
    assert admission.in_flight == 1  # the admitted call still finishes
    admission.exit()
    assert admission.in_flight == 0


async def test_expected_service_time_is_an_ewma_per_use_case() -> None:
    admission = Admission(max_in_flight=4, service_time_weight=0.5)
    assert admission.expected_service_s("search") == 0.0
    admission.served("search", 0.040)
    admission.served("search", 0.020)
    admission.served("category", 0.100)
    assert admission.expected_service_s("search") == pytest.approx(0.030)
    assert admission.expected_service_s("category") == pytest.approx(0.100)


async def test_a_deadline_shorter_than_the_service_time_is_refused_at_once() -> None:
    admission = Admission(max_in_flight=4, max_queued=4)
    admission.served("search", 0.050)
    # Idle: always tried, so the estimate can come down once the load has gone.
    await admission.enter("search", remaining_s=0.010)
    # Busy: a call that cannot finish in time never takes a slot or a place in line.
    with pytest.raises(Overloaded, match=r"10 ms left .* less than the 50 ms search takes"):
        await admission.enter("search", remaining_s=0.010)
    await admission.enter("category", remaining_s=0.010)  # another use-case, its own estimate
    await admission.enter("search", remaining_s=0.060)
    await admission.enter("search")  # no deadline
    assert admission.in_flight == 4 and admission.refused_for_deadline == 1
    for _ in range(4):
        admission.exit()
    assert admission.in_flight == 0


async def test_a_caller_whose_deadline_ran_short_in_line_passes_its_slot_on() -> None:
    admission = Admission(max_in_flight=1, max_queued=4)
    admission.served("search", 0.030)
    await admission.enter("search")
    late = asyncio.create_task(admission.enter("search", remaining_s=0.040))
    patient = asyncio.create_task(admission.enter("search"))
    await _settle()
    await asyncio.sleep(0.02)  # ``late`` now has ~20 ms left, less than the 30 ms expected
    admission.exit()
    await _settle()
    with pytest.raises(Overloaded, match="less than the 30 ms"):
        await late
    assert patient.done() and admission.in_flight == 1 and admission.queued == 0
    admission.exit()
    assert admission.in_flight == 0
