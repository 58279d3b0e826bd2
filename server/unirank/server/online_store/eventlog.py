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
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from unirank.server.online_store.base import FeatureStore, FeatureStoreError, RecentEvent, RecentIds
from unirank.v1 import recommender_pb2 as pb

log = logging.getLogger(__name__)

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


WriteFn = Callable[[int, "bytes | memoryview"], int]
"""``os.write``'s signature: tests pass one that fails part-way (a disk that fills mid-write)."""

PROBE_BYTES = 4096
"""What a health probe writes (to a sibling file, then removed) to tell that the disk takes writes."""
_TAIL_SCAN_BYTES = 1 << 16
"""How far back from the end a torn last row is looked for (rows are far shorter)."""
EVENT_LOG_UNAVAILABLE = "the event log cannot be written"
"""What a caller is told; the log's path and the OS error stay in the server's log."""


class EventLog:
    """Appends events to one CSV file, all or nothing per call; safe across ``serve --workers N``.

    Each append opens the file (``O_APPEND``), takes an exclusive ``flock``, writes the header if
    the file is empty and then every row, and closes it. Rotating the file (rename it, then read
    it) is therefore safe at any time: the next append starts a new file.

    A write that fails part-way (a full disk: ``ENOSPC``) is cut back to where the call started
    before the error is raised, so a failed call leaves no row and no fragment, and its retry
    starts on a clean line. A file whose last row was torn anyway (the process was killed
    mid-write) is cut back to its last whole row by the next append.
    """

    def __init__(self, path: str | Path, *, write: WriteFn = os.write) -> None:
        self.path = Path(path)
        self._write = write
        self.events_written = 0
        self.failed_appends = 0
        self.torn_bytes_dropped = 0

    def append(self, events: Sequence[RecentEvent]) -> None:
        """Append ``events`` (blocking); raises OSError, with the file as it was, when it cannot."""
        if not events:
            return
        rows = format_rows(events).encode("utf-8")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            start = self._whole_rows_end(fd, os.fstat(fd).st_size)
            if start == 0:
                rows = (",".join(COLUMNS) + "\n").encode("utf-8") + rows
            try:
                self._write_all(fd, rows)
            except OSError:
                self.failed_appends += 1
                os.ftruncate(fd, start)  # all or nothing: no rows and no fragment of this call
                raise
        finally:
            os.close(fd)  # releases the lock
        self.events_written += len(events)

    def probe(self) -> None:
        """Raise OSError unless the log can be opened for appending and its disk takes a write now."""
        os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        probe = self.path.with_name(f".{self.path.name}.probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._write_all(fd, bytes(PROBE_BYTES))
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._write(fd, view) :]

    def _whole_rows_end(self, fd: int, size: int) -> int:
        """``size``, or where the last whole row ends when a killed writer left a torn one (cut there)."""
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        offset = max(0, size - _TAIL_SCAN_BYTES)
        tail = os.pread(fd, size - offset, offset)
        end = offset + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        os.ftruncate(fd, end)
        self.torn_bytes_dropped += size - end
        log.warning("event log %s: dropped a torn last row (%d bytes)", self.path, size - end)
        return end


class LoggedFeatureStore:
    """A feature store that also appends every event it stores to an :class:`EventLog`.

    The log is written first, all or nothing; only then is the inner store updated. A call whose
    log write fails changes nothing and fails (UNAVAILABLE, the caller retries), and until the
    log takes writes again :attr:`healthy` is false (health reports NOT_SERVING; a probe retries
    every ``probe_interval_s``). When the inner store fails after the log took the events, the
    call fails too; its retry stores them (storing is idempotent) without logging them again,
    because events the log already holds are known by ``event_id`` (the most recent
    ``event_id_window`` ids are remembered). Events without an id are never deduplicated.
    Without an inner store (``store = "none"``) events are only logged.
    """

    def __init__(
        self,
        inner: FeatureStore | None,
        log: EventLog,
        *,
        event_id_window: int = 100_000,
        probe_interval_s: float = 1.0,
    ) -> None:
        self.inner = inner
        self.log = log
        self.name = inner.name if inner is not None else "none"
        self.inline = inner.inline if inner is not None else True
        self.logged_ids = RecentIds(event_id_window)
        self.duplicates = 0
        self.healthy = True
        self.probe_interval_s = probe_interval_s
        self._on_health: Callable[[bool], Awaitable[None]] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one append at a time per process: ids are checked and marked together

    async def watch(self, on_health: Callable[[bool], Awaitable[None]]) -> bool:
        """Probe the log now and call ``on_health(ok)`` whenever that changes; returns whether it is ok."""
        self._on_health = on_health
        try:
            await asyncio.to_thread(self.log.probe)
        except OSError as exc:
            await self._failed(exc)
        return self.healthy

    async def append(self, events: Sequence[RecentEvent]) -> None:
        async with self._lock:
            fresh = self.logged_ids.new(events)
            self.duplicates += len(events) - len(fresh)
            try:
                await asyncio.to_thread(self.log.append, fresh)
            except OSError as exc:
                await self._failed(exc)
                raise FeatureStoreError(EVENT_LOG_UNAVAILABLE, f"event log {self.log.path}: {exc}") from exc
            self.logged_ids.add(fresh)
        await self._set_healthy(True)
        if self.inner is not None:
            await self.inner.append(events)

    async def _failed(self, exc: OSError) -> None:
        log.warning("event log %s cannot be written: %s", self.log.path, exc)
        await self._set_healthy(False)
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_until_writable())

    async def _probe_until_writable(self) -> None:
        while not self.healthy:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await asyncio.to_thread(self.log.probe)
            except OSError:
                continue
            log.info("event log %s takes writes again", self.log.path)
            await self._set_healthy(True)

    async def _set_healthy(self, healthy: bool) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if self._on_health is not None:
            await self._on_health(healthy)

    async def recent(self, user_id: str, limit: int, since_ms: int) -> list[str]:
        if self.inner is None:
            return []
        return await self.inner.recent(user_id, limit, since_ms)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self.inner is not None:
            await self.inner.close()
