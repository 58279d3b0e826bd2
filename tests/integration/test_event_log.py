"""The event log sink: a real server appends accepted RecordEvents events to a CSV file in the
UniRank log format, and the training side's validator accepts what it wrote."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

from unirank.artifact import load_artifact
from unirank.artifact.logformat import REQUIRED_COLUMNS, parse_timestamp_ms
from unirank.client import AsyncRecommenderClient, Event, UniRankError
from unirank.server.config import ProfileError
from unirank.server.online_store import EventLog, RecentEvent
from unirank.server.online_store.eventlog import COLUMNS
from unirank.training.eventlogs import merge_event_logs
from unirank.training.logreader import read_logs
from unirank.training.sources import load_logs
from unirank.v1 import recommender_pb2 as pb

from ..conftest import profile_with, running_server

T0_MS = 1_780_000_000_123


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_the_columns_are_the_log_formats() -> None:
    assert set(REQUIRED_COLUMNS["interactions"]) <= set(COLUMNS)


def test_rows_carry_the_time_in_seconds_and_the_log_formats_event_type(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.csv")
    log.append(
        [
            RecentEvent("u1", "i1", T0_MS),
            RecentEvent("u,2", 'i"2', T0_MS + 1, pb.EVENT_TYPE_NOTIFICATION_OPEN),
            RecentEvent("u3", "i3", T0_MS + 2, pb.EVENT_TYPE_SEARCH_CLICK),
        ]
    )
    header, rows = _read(tmp_path / "events.csv")
    assert header == list(COLUMNS)
    assert [(r["user_id"], r["item_id"], r["event_type"]) for r in rows] == [
        ("u1", "i1", "play"),
        ("u,2", 'i"2', "notification_open"),
        ("u3", "i3", "play"),  # a click without its query is an engagement, not a search label
    ]
    assert [parse_timestamp_ms(r["timestamp"]) for r in rows] == [T0_MS, T0_MS + 1, T0_MS + 2]


def test_concurrent_appends_keep_one_header_and_whole_rows(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"

    def writer(n: int) -> None:
        log = EventLog(path)  # one per writer, like one per server process
        for k in range(50):
            log.append([RecentEvent(f"u{n}", f"i{k}-{j}", T0_MS + k) for j in range(20)])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_text().splitlines()
    assert lines.count(",".join(COLUMNS)) == 1 and lines[0] == ",".join(COLUMNS)
    _, rows = _read(path)
    assert len(rows) == 4 * 50 * 20
    assert all(r["user_id"].startswith("u") and r["event_type"] == "play" for r in rows)


def test_a_rotated_log_starts_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    log = EventLog(path)
    log.append([RecentEvent("u1", "i1", T0_MS)])
    path.rename(tmp_path / "events.1.csv")
    log.append([RecentEvent("u2", "i2", T0_MS)])
    assert [r["user_id"] for r in _read(path)[1]] == ["u2"]
    assert [r["user_id"] for r in _read(tmp_path / "events.1.csv")[1]] == ["u1"]


def test_the_profile_option_is_typed() -> None:
    profile = profile_with(features={"event_log": "events.csv"})
    assert profile.features.event_log == "events.csv"
    with pytest.raises(ProfileError, match="event_log"):
        profile_with(features={"event_log": 3})


async def test_a_server_logs_accepted_events_and_training_accepts_them(
    artifact_dir: Path, tmp_path: Path
) -> None:
    events_csv = tmp_path / "events.csv"
    catalog = load_artifact(artifact_dir).catalog
    items = catalog.items.keys[1:7]
    user = catalog.users.key(5)
    now_ms = int(time.time() * 1000)  # inside the freshness window, so requests see them
    sent = [Event(user, item, "play", now_ms - 1000 * (10 - k)) for k, item in enumerate(items)]
    sent += [
        Event("someone-new", items[0], "notification_open", now_ms),
        Event(user, "not-in-the-catalogue", "play", now_ms),  # ignored: never logged
    ]
    async with (
        running_server(profile_with(features={"event_log": str(events_csv)}), artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        recorded = await client.record_events(sent)
        # Recorded events still reach the next request (the store is wrapped, not replaced).
        ranking = await client.notification(user, max_results=20)
    assert (recorded.accepted, recorded.ignored) == (len(sent) - 1, 1)
    assert not set(items) & set(ranking.item_ids)  # exclude_seen saw the fresh history

    header, rows = _read(events_csv)
    assert header == list(COLUMNS)
    assert [(r["user_id"], r["item_id"]) for r in rows] == [(e.user_id, e.item_id) for e in sent[:-1]]
    assert rows[-1]["event_type"] == "notification_open"

    # The training side reads it as logs: base logs (the artifact's own data) + the event log.
    base = load_logs("synthetic", size="tiny", seed=0)
    merge = merge_event_logs(base, [events_csv, events_csv], tmp_path / "logs")  # a repeat is dropped
    assert (merge.event_rows, merge.duplicates, merge.appended) == (2 * len(rows), len(rows), len(rows))
    assert merge.report.ok and not merge.report.problems, merge.report.format()
    merged = read_logs(tmp_path / "logs")
    assert len(merged.events) == len(base.events) + len(rows)
    assert "someone-new" in merged.user_ids


async def test_a_log_that_cannot_be_written_fails_the_call(artifact_dir: Path, tmp_path: Path) -> None:
    profile = profile_with(features={"event_log": str(tmp_path / "no-such-dir" / "events.csv")})
    item = load_artifact(artifact_dir).catalog.items.key(1)
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        with pytest.raises(UniRankError) as caught:
            await client.record_events([Event("u1", item)])
    assert caught.value.code == "UNAVAILABLE"


async def test_a_log_without_a_store_only_logs(artifact_dir: Path, tmp_path: Path) -> None:
    events_csv = tmp_path / "events.csv"
    profile = profile_with(features={"store": "none", "event_log": str(events_csv)})
    item = load_artifact(artifact_dir).catalog.items.key(1)
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        recorded = await client.record_events([Event("u1", item, event_time_unix_ms=T0_MS)])
        ranking = await client.notification("u1")
    assert recorded.accepted == 1 and ranking.items
    assert [r["item_id"] for r in _read(events_csv)[1]] == [item]
