"""The event log on a full disk (issue 13, finding 3) and one valid event time for server and
training (finding 4).

A full disk is simulated by handing the log a ``write`` that stops taking bytes part-way, the way
``os.write`` does with ``ENOSPC``: the bytes before the limit land in the file, then OSError.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import os
from pathlib import Path

import pytest

from unirank.artifact import load_artifact
from unirank.artifact.eventtime import MAX_EVENT_TIME_MS
from unirank.client import AsyncRecommenderClient, Event, UniRankError
from unirank.server.app import UniRankServer
from unirank.server.codec import events_from_pb
from unirank.server.errors import InvalidArgument
from unirank.server.online_store import EventLog, InMemoryFeatureStore, LoggedFeatureStore, RecentEvent
from unirank.server.online_store.eventlog import COLUMNS, format_rows
from unirank.training.logreader import LogReport, _timestamp
from unirank.v1 import recommender_pb2 as pb

from ..conftest import relaxed_profile

T0_MS = 1_780_000_000_000


class Disk:
    """``os.write`` on a disk with ``free`` bytes left (None: unlimited)."""

    def __init__(self) -> None:
        self.free: int | None = None

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.free is None:
            return os.write(fd, data)
        if self.free == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, bytes(data[: self.free]))
        self.free -= written
        return written


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _events(user: str, n: int, prefix: str = "i") -> list[RecentEvent]:
    return [RecentEvent(user, f"{prefix}{k}", T0_MS + k, 0, f"{user}-{k}") for k in range(n)]


def test_a_disk_that_fills_mid_write_leaves_no_row_and_no_fragment(tmp_path: Path) -> None:
    path, disk = tmp_path / "events.csv", Disk()
    log = EventLog(path, write=disk.write)
    log.append(_events("first", 3))
    before = path.read_bytes()

    batch = _events("second", 20)
    disk.free = len(format_rows(batch[:9])) + 5  # nine whole rows and a fragment of the tenth fit
    with pytest.raises(OSError) as caught:
        log.append(batch)
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before  # the nine rows and the fragment were cut back

    disk.free = None
    log.append(batch)  # the retry starts on a clean line
    rows = _rows(path)
    assert [r["user_id"] for r in rows] == ["first"] * 3 + ["second"] * 20
    assert [r["item_id"] for r in rows[3:]] == [e.item_id for e in batch]
    assert log.failed_appends == 1


def test_a_torn_last_row_left_by_a_killed_writer_is_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    log = EventLog(path)
    log.append(_events("first", 2))
    with path.open("ab") as handle:
        handle.write(b"u-half-writ")  # a process killed mid-write
    log.append(_events("second", 2))
    rows = _rows(path)
    assert [r["user_id"] for r in rows] == ["first", "first", "second", "second"]
    assert log.torn_bytes_dropped == len(b"u-half-writ")


def test_a_header_cut_short_is_rewritten_whole(tmp_path: Path) -> None:
    path, disk = tmp_path / "events.csv", Disk()
    log = EventLog(path, write=disk.write)
    disk.free = 7  # not even the header fits
    with pytest.raises(OSError):
        log.append(_events("u", 1))
    assert path.read_bytes() == b""
    disk.free = None
    log.append(_events("u", 1))
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)


async def test_a_retried_event_id_is_logged_once(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    store = LoggedFeatureStore(InMemoryFeatureStore(), EventLog(path), event_id_window=100)
    batch = _events("u", 5)
    await store.append(batch)
    await store.append(batch)  # a retry of a call whose answer was lost
    await store.append([*batch[:2], RecentEvent("u", "i-no-id", T0_MS)])
    await store.append([RecentEvent("u", "i-no-id", T0_MS)])  # no id: never deduplicated
    assert [r["item_id"] for r in _rows(path)] == [e.item_id for e in batch] + ["i-no-id"] * 2
    assert store.duplicates == 7
    # Ids leave the window oldest first.
    small = LoggedFeatureStore(None, EventLog(tmp_path / "small.csv"), event_id_window=2)
    await small.append(_events("v", 3))
    await small.append(_events("v", 3))
    assert [r["item_id"] for r in _rows(tmp_path / "small.csv")] == ["i0", "i1", "i2", "i0"]


async def test_a_call_that_fails_on_a_full_disk_changes_nothing_and_takes_the_server_out_of_service(
    artifact_dir: Path, tmp_path: Path
) -> None:
    path, disk = tmp_path / "events.csv", Disk()
    inner = InMemoryFeatureStore()
    store = LoggedFeatureStore(inner, EventLog(path, write=disk.write), probe_interval_s=0.05)
    items = load_artifact(artifact_dir).catalog.items.keys[1:21]
    first = [Event("u-first", item, event_time_unix_ms=T0_MS) for item in items[:3]]
    batch = [Event("u-full", item, event_time_unix_ms=T0_MS + k) for k, item in enumerate(items)]
    server = UniRankServer(relaxed_profile("cpu-realtime"), artifact_dir, port=0, features=store)
    await server.start()
    try:
        async with AsyncRecommenderClient(server.address) as client:
            await client.record_events(first)
            before = path.read_bytes()
            assert await client.health() == "SERVING"

            disk.free = 300  # a few rows and a fragment fit, then the disk is full
            with pytest.raises(UniRankError) as caught:
                await client.record_events(batch)
            assert caught.value.code == "UNAVAILABLE"
            assert str(tmp_path) not in caught.value.message and "events.csv" not in caught.value.message
            assert path.read_bytes() == before  # no row, no fragment
            assert await inner.recent("u-full", 50, 0) == []  # and nothing reached the feature store
            assert await client.health() == "NOT_SERVING"

            disk.free = None  # space freed: the probe puts the server back in service
            for _ in range(200):
                if await client.health() == "SERVING":
                    break
                await asyncio.sleep(0.02)
            assert await client.health() == "SERVING"
            recorded = await client.record_events(batch)  # the retry: the same events, the same ids
            again = await client.record_events(batch)  # a retry of a call whose answer was lost
            assert len(await inner.recent("u-full", 50, 0)) == len(batch)
    finally:
        await server.stop(grace_s=0.5)
    assert recorded.accepted == again.accepted == len(batch)
    rows = _rows(path)
    assert [(r["user_id"], r["item_id"]) for r in rows] == [(e.user_id, e.item_id) for e in first + batch]


# -- finding 4: one definition of a valid event time -------------------------------------------------

TIMES_MS = [1, T0_MS, MAX_EVENT_TIME_MS, MAX_EVENT_TIME_MS + 1, 4_200_000_000_000, 2**63 - 1, -1, -(2**63)]


def _server_accepts(time_ms: int) -> bool:
    message = pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="i", event_time_unix_ms=time_ms)])
    try:
        events_from_pb(message, 10, T0_MS)
    except InvalidArgument as exc:
        assert [v.field for v in exc.violations] == ["events[0].event_time_unix_ms"]
        return False
    return True


def _training_accepts(time_ms: int) -> bool:
    report = LogReport("events")
    seconds, millis = divmod(time_ms, 1000)
    return _timestamp(report, "interactions", 1, f"{seconds}.{millis:03d}") is not None


@pytest.mark.parametrize("time_ms", TIMES_MS)
def test_the_server_accepts_exactly_the_event_times_training_accepts(time_ms: int) -> None:
    assert _server_accepts(time_ms) == _training_accepts(time_ms)


def test_a_logged_event_at_the_last_valid_time_reads_back_in_training(tmp_path: Path) -> None:
    row = format_rows([RecentEvent("u", "i", MAX_EVENT_TIME_MS)]).strip().split(",")
    assert _timestamp(LogReport("events"), "interactions", 1, row[2]) == MAX_EVENT_TIME_MS


async def test_record_events_refuses_a_time_past_2100_by_field(artifact_dir: Path) -> None:
    from ..conftest import running_server

    item = load_artifact(artifact_dir).catalog.items.key(1)
    async with (
        running_server("cpu-realtime", artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        for time_ms in (MAX_EVENT_TIME_MS + 1, 2**63 - 1):
            with pytest.raises(UniRankError) as caught:
                await client.record_events([Event("u", item, event_time_unix_ms=time_ms)])
            assert caught.value.code == "INVALID_ARGUMENT"
            assert [f for f, _ in caught.value.field_violations] == ["events[0].event_time_unix_ms"]
        recorded = await client.record_events([Event("u", item, event_time_unix_ms=MAX_EVENT_TIME_MS)])
    assert recorded.accepted == 1
