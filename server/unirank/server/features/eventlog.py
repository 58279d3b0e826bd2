"""The event log: every event RecordEvents accepts, appended to a CSV file that training reads.

The file is the ``interactions`` table of the UniRank log format v1 (docs/data.md): one header
row, then ``user_id, item_id, timestamp, event_type`` per event, the timestamp in Unix seconds
with milliseconds. The server never imports training code, so the column names and event-type
names are written out here; a test feeds what a real server wrote to the training validator.

``python -m unirank.training.eventlogs`` (training side) turns base logs plus this file into a
new log directory for ``unirank train --warm-start`` (docs/deployment.md, "Freshness loop").
"""

from __future__ import annotations

import asyncio
import csv
import fcntl
import io
import os
from collections.abc import Sequence
from pathlib import Path

from unirank.server.features.base import FeatureStore, FeatureStoreError, RecentEvent
from unirank.v1 import recommender_pb2 as pb

COLUMNS: tuple[str, ...] = ("user_id", "item_id", "timestamp", "event_type")
"""Column names of the log format's interactions table that the server fills."""

LOG_EVENT_TYPES: dict[int, str] = {pb.EVENT_TYPE_NOTIFICATION_OPEN: "notification_open"}
"""Log-format ``event_type`` per ``unirank.v1.EventType``; anything else is ``play``.

A click or search click is recorded as ``play`` (an engagement with the item): the log format's
surface clicks need the context they happened in (the query, the anchor, the row), which an
``Event`` does not carry, and a click without it is an invalid row there."""


def log_event_type(event_type: int) -> str:
    return LOG_EVENT_TYPES.get(event_type, "play")


def format_rows(events: Sequence[RecentEvent]) -> str:
    """The CSV rows (no header) of ``events``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for event in events:
        seconds, millis = divmod(event.event_time_ms, 1000)
        writer.writerow(
            (event.user_id, event.item_id, f"{seconds}.{millis:03d}", log_event_type(event.event_type))
        )
    return buffer.getvalue()


class EventLog:
    """Appends events to one CSV file; safe across the processes of ``serve --workers N``.

    Each append opens the file (``O_APPEND``), takes an exclusive ``flock``, writes the header if
    the file is empty and then every row in one write, and closes it. Rotating the file (rename
    it, then read it) is therefore safe at any time: the next append starts a new file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.events_written = 0

    def append(self, events: Sequence[RecentEvent]) -> None:
        """Append ``events`` (blocking); raises OSError when the file cannot be written."""
        if not events:
            return
        rows = format_rows(events).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size == 0:
                rows = (",".join(COLUMNS) + "\n").encode("utf-8") + rows
            view = memoryview(rows)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)  # releases the lock
        self.events_written += len(events)


class LoggedFeatureStore:
    """A feature store that also appends every event it stores to an :class:`EventLog`.

    The inner store is written first: when it fails, the call fails (the client retries) and
    nothing is logged. A failing log write fails the call too, so an accepted event is never
    missing from the log; a retried call may log an event twice, which the training side drops
    as an exact duplicate. Without an inner store (``store = "none"``) events are only logged.
    """

    def __init__(self, inner: FeatureStore | None, log: EventLog) -> None:
        self.inner = inner
        self.log = log
        self.name = inner.name if inner is not None else "none"
        self.inline = inner.inline if inner is not None else True

    async def append(self, events: Sequence[RecentEvent]) -> None:
        if self.inner is not None:
            await self.inner.append(events)
        try:
            await asyncio.to_thread(self.log.append, events)
        except OSError as exc:
            raise FeatureStoreError(f"event log {self.log.path}: {exc}") from exc

    async def recent(self, user_id: str, limit: int, since_ms: int) -> list[str]:
        if self.inner is None:
            return []
        return await self.inner.recent(user_id, limit, since_ms)

    async def close(self) -> None:
        if self.inner is not None:
            await self.inner.close()
