"""Impressions and attributed feedback through real servers and the real client: every answer gets
an impression id, clicks on it count for its task and position once, and what cannot be attributed
is counted by reason; with Redis, an answer of one replica is clicked on another."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from unirank.client import (
    AsyncRecommenderClient,
    Event,
    Notification,
    RecommendationRequest,
    Search,
    UniRankError,
)
from unirank.client.monitor import ServingStats, StatsClient
from unirank.server.app import UniRankServer
from unirank.server.config import Profile

from ..conftest import profile_with, running_server
from ..integration.test_freshness import RedisServer, redis_server  # noqa: F401 (fixture)

QUERY_TASKS = {"search": {"timeout_ms": 10_000, "cache": {"enabled": True}}}


def _profile(window_s: float = 3600.0, **impressions: object) -> Profile:
    return profile_with(
        impressions=impressions,
        tasks={
            "search": {
                "timeout_ms": 10_000,
                "cache": {"enabled": True},
                "kpi": {"attribution_window_s": window_s},
            },
            "notification": {"timeout_ms": 10_000, "kpi": {"attribution_window_s": window_s}},
        },
    )


async def _stats(server: UniRankServer) -> ServingStats:
    def fetch() -> ServingStats:
        with StatsClient(server.address) as client:
            return client.fetch()

    return await asyncio.to_thread(fetch)


def _query(server: UniRankServer) -> str:
    catalog = server.pipeline.runtime.artifact.catalog
    return catalog.titles[1].split()[0]


async def test_clicks_are_attributed_once_at_their_position(artifact_dir: Path) -> None:
    async with (
        running_server(_profile(), artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        query = _query(server)
        first = await client.search(query, user_id="u1")
        cached = await client.search(query, user_id="u1")
        assert cached.served_from_cache
        assert first.impression_id and cached.impression_id and first.impression_id != cached.impression_id
        assert len(first.items) >= 3
        item = first.items[1].item_id  # position 2
        click = Event(
            "u1", item, "click", impression_id=first.impression_id, position=2, engagement_seconds=4.0
        )
        recorded = await client.record_events([click, dataclasses.replace(click)])  # same event_id twice
        assert (recorded.attributed, recorded.unattributed) == (1, 1)
        retried = await client.record_events([click])  # a retried call
        assert (retried.attributed, retried.unattributed) == (0, 1)
        play = Event(
            "u1",
            first.items[0].item_id,
            "play_start",
            impression_id=first.impression_id,
            engagement_seconds=30.0,
        )
        view = Event("u1", first.items[2].item_id, "impression", impression_id=cached.impression_id)
        stray = [
            Event("u1", item, "click", impression_id="0" * 24),  # never issued
            Event("u1", "not-in-that-answer", "click", impression_id=first.impression_id),
        ]
        recorded = await client.record_events([play, view, *stray])
        assert (recorded.attributed, recorded.unattributed) == (2, 2)
        # The play and the click on a known item still feed the history; a view is no engagement.
        assert (recorded.accepted, recorded.ignored) == (2, 1)
        stats = await _stats(server)
        search = stats.tasks["search"]
        assert (search.impressions, search.clicks, search.plays) == (2, 1, 1)
        assert search.engagement_seconds == pytest.approx(34.0)
        assert stats.unattributed_by_reason == {
            "duplicate": 2,
            "unknown_impression": 1,
            "item_not_in_answer": 1,
        }
        kpis = server.pipeline._telemetry.stats.kpis.for_task("search")
        [(version, arm, kpi)] = kpis
        assert (version, arm) == (server.pipeline.runtime.version, "stable")
        assert kpi.click_positions[1] == 1 and sum(kpi.click_positions) == 1
        assert kpi.events["view"] == 1


async def test_old_clients_events_still_work(artifact_dir: Path) -> None:
    async with (
        running_server(_profile(), artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        answer = await client.notification("u1")
        recorded = await client.record_events([Event("u1", answer.items[0].item_id)])
        assert (recorded.accepted, recorded.attributed, recorded.unattributed) == (1, 0, 0)
        assert (await _stats(server)).tasks["notification"].clicks == 0


async def test_expired_impressions_are_not_attributed(artifact_dir: Path) -> None:
    async with (
        running_server(_profile(window_s=0.2), artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        answer = await client.notification("u1")
        await asyncio.sleep(0.4)
        late = Event("u1", answer.items[0].item_id, "click", impression_id=answer.impression_id)
        recorded = await client.record_events([late])
        assert (recorded.attributed, recorded.unattributed) == (0, 1)
        stats = await _stats(server)
        assert stats.tasks["notification"].clicks == 0
        assert stats.unattributed_by_reason == {"unknown_impression": 1}


async def test_malformed_feedback_is_refused_by_field(artifact_dir: Path) -> None:
    async with (
        running_server(_profile(), artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        answer = await client.notification("u1")
        item = answer.items[0].item_id
        for event, field in (
            (
                Event("u1", item, "play", impression_id=answer.impression_id, engagement_seconds=-1.0),
                "engagement_seconds",
            ),
            (
                Event(
                    "u1", item, "play", impression_id=answer.impression_id, engagement_seconds=float("nan")
                ),
                "engagement_seconds",
            ),
            (Event("u1", item, "click", position=3), "position"),
            (Event("u1", item, "click", impression_id="bad\nid"), "impression_id"),
        ):
            with pytest.raises(UniRankError) as caught:
                await client.record_events([event])
            assert caught.value.code == "INVALID_ARGUMENT"
            assert f"events[0].{field}" in str(caught.value)


async def test_redis_shared_by_replicas_counts_a_click_once(
    artifact_dir: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    profile = _profile(store="redis", redis_url=redis_server.url)
    async with (
        running_server(profile, artifact_dir) as one,
        running_server(profile, artifact_dir) as two,
        AsyncRecommenderClient(one.address) as first,
        AsyncRecommenderClient(two.address) as second,
    ):
        answer = await first.notification("u1")
        click = Event(
            "u1", answer.items[0].item_id, "click", impression_id=answer.impression_id, engagement_seconds=2.0
        )
        recorded = await second.record_events([click])
        assert (recorded.attributed, recorded.unattributed) == (1, 0)
        again = await first.record_events([click])  # the retry reached the other replica
        assert (again.attributed, again.unattributed) == (0, 1)
        stats_one, stats_two = await _stats(one), await _stats(two)
        assert stats_one.tasks["notification"].impressions == 1
        assert stats_one.tasks["notification"].clicks + stats_two.tasks["notification"].clicks == 1
        assert stats_two.tasks["notification"].clicks == 1
        assert stats_one.unattributed_by_reason == {"duplicate": 1}


async def test_every_batch_member_is_an_impression_of_its_task(artifact_dir: Path) -> None:
    async with (
        running_server(_profile(), artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        query = _query(server)
        answers = await client.recommend_batch(
            [
                RecommendationRequest(Notification(), user_id="u1"),
                RecommendationRequest(Search(query), user_id="u1"),
                RecommendationRequest(Search(query), user_id="u2"),
            ]
        )
        ids = [answer.impression_id for answer in answers]
        assert all(ids) and len(set(ids)) == 3
        click = Event("u2", answers[2].items[0].item_id, "search_click", impression_id=ids[2])
        assert (await client.record_events([click])).attributed == 1
        stats = await _stats(server)
        assert (stats.tasks["notification"].impressions, stats.tasks["search"].impressions) == (1, 2)
        assert stats.tasks["search"].clicks == 1


async def test_a_lost_redis_store_degrades_without_errors(
    artifact_dir: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    profile = _profile(store="redis", redis_url=redis_server.url, timeout_ms=200)
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        before = await client.notification("u1")
        redis_server.stop()
        answer = await client.notification("u2")  # answered, though its impression is not stored
        assert answer.items and answer.impression_id
        events = [
            Event("u1", before.items[0].item_id, "click", impression_id=before.impression_id),
            Event("u2", answer.items[0].item_id, "click", impression_id=answer.impression_id),
        ]
        recorded = await client.record_events(events)
        assert (recorded.attributed, recorded.unattributed) == (0, 2)
        stats = await _stats(server)
        assert stats.unattributed_by_reason == {"store_unavailable": 2}
        assert stats.tasks["notification"].impressions == 2
        assert server.pipeline is not None and server.pipeline.impressions.store_errors == 2
