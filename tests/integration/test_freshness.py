"""Real-time freshness: RecordEvents feeds the online feature store and the next request reflects
it, in process and through a real redis-server shared by replicas; a lost store degrades."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from unirank.artifact import load_artifact
from unirank.client import AsyncRecommenderClient, Event, UniRankError
from unirank.server.online_store import FeatureStoreError, RecentEvent

from ..conftest import profile_with, running_server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._cmd = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs Debian's redis-server")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def _ids(artifact_dir: Path) -> tuple[str, list[str], list[str]]:
    """A user, the items the model ranks for them now, and far-away items to engage with."""
    artifact = load_artifact(artifact_dir)
    catalog = artifact.catalog
    popular = [catalog.items.key(int(i)) for i in artifact.retrieval.popular_items]
    return catalog.users.key(3), popular[:10], popular[-3:]


def _store_profile(**features: object) -> object:
    return profile_with(
        features=features,
        tasks={"notification": {"timeout_ms": 10_000}, "related_items": {"timeout_ms": 10_000}},
    )


async def _before_after(
    address: str, other: str, user: str, items: list[str]
) -> tuple[list[str], list[str], int]:
    async with AsyncRecommenderClient(address) as client, AsyncRecommenderClient(other) as reader:
        before = [i.item_id for i in (await reader.notification(user, max_results=20)).items]
        recorded = await client.record_events([Event(user, item) for item in items])
        after = [i.item_id for i in (await reader.notification(user, max_results=20)).items]
    return before, after, recorded.accepted


async def test_in_process_store_changes_the_next_ranking(artifact_dir: Path) -> None:
    user, _, engaged = _ids(artifact_dir)
    async with running_server(_store_profile(store="memory"), artifact_dir) as server:
        before, after, accepted = await _before_after(server.address, server.address, user, engaged)
    assert accepted == len(engaged)
    assert before != after
    assert not set(engaged) & set(after)  # exclude_seen now knows them


async def test_redis_store_is_shared_by_replicas(artifact_dir: Path, redis_server: RedisServer) -> None:
    user, _, engaged = _ids(artifact_dir)
    profile = _store_profile(store="redis", redis_url=redis_server.url)
    async with (
        running_server(profile, artifact_dir) as writer,
        running_server(profile, artifact_dir) as reader,
    ):
        before, after, accepted = await _before_after(writer.address, reader.address, user, engaged)
    assert accepted == len(engaged)
    assert before != after, "the replica that did not receive the events did not see them"
    assert not set(engaged) & set(after)


async def test_events_older_than_the_freshness_window_are_not_used(artifact_dir: Path) -> None:
    user, _, engaged = _ids(artifact_dir)
    profile = profile_with(
        tasks={"notification": {"timeout_ms": 10_000, "freshness": {"max_feature_age_s": 60}}}
    )
    old = int(time.time() * 1000) - 3_600_000
    other = load_artifact(artifact_dir).catalog.users.key(4)
    rankings = {}
    # The same old events, once as the user's and once as another user's: the items' recent
    # popularity (time features) takes them in either way, but the user's own history must not.
    for owner in (user, other):
        async with (
            running_server(profile, artifact_dir) as server,
            AsyncRecommenderClient(server.address) as client,
        ):
            await client.record_events([Event(owner, item, event_time_unix_ms=old) for item in engaged])
            ranking = await client.notification(user, max_results=20)
            rankings[owner] = [i.item_id for i in ranking.items]
    assert rankings[user] == rankings[other]


async def test_redis_going_away_degrades_without_errors(
    artifact_dir: Path, redis_server: RedisServer
) -> None:
    user, _, engaged = _ids(artifact_dir)
    profile = _store_profile(store="redis", redis_url=redis_server.url, timeout_ms=50)
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        await client.record_events([Event(user, item) for item in engaged])
        redis_server.stop()
        rankings = [await client.notification(user, max_results=10) for _ in range(5)]
        with pytest.raises(UniRankError) as write_error:
            await client.record_events([Event(user, engaged[0])])
        errors = server.pipeline.feature_store_errors
    assert all(r.items and not r.fallback for r in rankings)
    assert errors >= 5
    assert write_error.value.code == "UNAVAILABLE" and write_error.value.retry_after_s


async def test_record_events_validates_and_ignores_unknown_items(artifact_dir: Path) -> None:
    user, _, engaged = _ids(artifact_dir)
    async with (
        running_server("cpu-realtime", artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        recorded = await client.record_events([Event(user, engaged[0]), Event(user, "no-such-item")])
        with pytest.raises(UniRankError) as bad:
            await client.record_events([Event("", engaged[0])])
        with pytest.raises(UniRankError) as empty:
            await client.record_events([])
    assert (recorded.accepted, recorded.ignored) == (1, 1)
    assert [f for f, _ in bad.value.field_violations] == ["events[0].user_id"]
    assert [f for f, _ in empty.value.field_violations] == ["events"]


class _BrokenStore:
    name = "broken"
    inline = False

    async def append(self, events: list[RecentEvent]) -> None:
        raise FeatureStoreError("injected")

    async def recent(self, user_id: str, limit: int, since_ms: int) -> list[str]:
        raise FeatureStoreError("injected")

    async def close(self) -> None: ...


async def test_a_failing_store_never_fails_a_ranking(artifact_dir: Path) -> None:
    from unirank.server.app import UniRankServer

    user, _, engaged = _ids(artifact_dir)
    server = UniRankServer(_store_profile(), artifact_dir, port=0, features=_BrokenStore())
    await server.start()
    try:
        async with AsyncRecommenderClient(server.address) as client:
            ranking = await client.notification(user, history_item_ids=engaged[:1])
            with pytest.raises(UniRankError) as error:
                await client.record_events([Event(user, engaged[0])])
    finally:
        await server.stop(1.0)
    assert ranking.items and not ranking.fallback
    assert error.value.code == "UNAVAILABLE" and error.value.reason == "FEATURE_STORE_UNAVAILABLE"
