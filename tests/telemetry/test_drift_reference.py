"""The drift reference is the top score of the candidate sets this profile serves: healthy traffic
reads as stable, where the artifact's full-catalogue reference read it as drift (PSI 3 to 8)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import profile_with, running_server
from unirank.artifact import load_artifact
from unirank.client import AsyncRecommenderClient
from unirank.client.monitor import StatsClient
from unirank.server.app import UniRankServer
from unirank.server.reference import REFERENCE_REQUESTS
from unirank.server.telemetry import ScoreReference

REQUESTS = 150


async def _psi_after_healthy_traffic(artifact_dir: Path, reference: str) -> dict[str, float | None]:
    artifact = load_artifact(artifact_dir)
    catalog, retrieval = artifact.catalog, artifact.retrieval
    profile = profile_with(
        "cpu-realtime",
        telemetry={"drift_reference": reference, "drift_window": REQUESTS, "drift_min_samples": REQUESTS},
        tasks={"category": {"cache": {"enabled": False}}},
    )
    rng = np.random.default_rng(7)
    users = np.flatnonzero(np.diff(retrieval.user_history_indptr) > 0)
    # Healthy traffic: anchors drawn by popularity as the reference models it (weight 1/rank over
    # the popular items), an independent sample. A much steeper mix (a third of the calls on one
    # item) is a real change of input, and with time features the top scores follow it: PSI is
    # meant to flag that, and did (0.67-0.76 on related items).
    popular = retrieval.popular_items[: REFERENCE_REQUESTS * 5]
    weights = 1.0 / np.arange(1, len(popular) + 1)
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(f"127.0.0.1:{server.port}") as client,
    ):
        for _ in range(REQUESTS):
            item = int(rng.choice(popular, p=weights / weights.sum()))
            await client.notification(catalog.users.key(int(rng.choice(users))))  # its stored history
            await client.related_items(catalog.items.key(item))
            await client.category(catalog.primary_category(item))
        with StatsClient(f"127.0.0.1:{server.port}") as stats:
            tasks = (await asyncio.to_thread(stats.fetch)).tasks
    return {name: tasks[name].psi for name in ("notification", "related_items", "category")}


@pytest.mark.timeout(300)
async def test_healthy_traffic_is_stable_against_the_served_reference(artifact_dir: Path) -> None:
    served = await _psi_after_healthy_traffic(artifact_dir, "served")
    offline = await _psi_after_healthy_traffic(artifact_dir, "offline")
    for task, value in served.items():
        assert value is not None and value < 0.5, (task, served, offline)
    # What the served reference fixes: a retrieved candidate set's best score sits below the whole
    # catalogue's, so the offline reference calls the same healthy traffic drift.
    assert offline["related_items"] is not None and offline["related_items"] > 1.0, offline
    assert offline["category"] is not None and offline["category"] > 1.0, offline


async def test_the_server_serves_before_its_reference_is_measured_and_drift_follows(
    artifact_dir: Path,
) -> None:
    """Start-up scores only the first CHECK_REQUESTS reference requests per use-case; SERVING comes
    before the rest (5 CPU seconds at a million items), and drift is measured once they are in."""
    profile = profile_with("cpu-realtime", telemetry={"drift_window": 10, "drift_min_samples": 1})
    server = UniRankServer(profile, artifact_dir, host="127.0.0.1", port=0)
    await server.start()
    try:
        stats = server.telemetry.stats
        assert stats.task("related_items").drift is None  # measured use-cases: no reference yet
        assert stats.task("notification").drift is None
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        await server.drift_reference_ready()
        artifact = load_artifact(artifact_dir)
        item = artifact.catalog.items.key(int(artifact.retrieval.popular_items[0]))
        async with AsyncRecommenderClient(server.address) as client:
            await client.related_items(item)
        drift = stats.task("related_items").drift
        assert drift is not None and drift.samples == 1 and drift.psi() is not None
        # Its reference is the served one, 200 requests' top scores, not the artifact's offline one.
        offline = ScoreReference.from_metrics(artifact.metrics)["related_items"]
        assert drift.reference != offline
    finally:
        await server.stop(grace_s=1.0)


async def test_the_reference_lets_calls_in_between_its_requests(artifact_dir: Path) -> None:
    """The reference is measured after SERVING, with no call open, so its model calls can run on
    the loop without suspending (inline_when_alone; inference_workers = 0 without batching, as
    here): it yields between requests, so calls are answered meanwhile."""
    from unirank.server.reference import top_scores

    inline = profile_with(model={"inference_workers": 0, "batching": {"enabled": False}})
    async with running_server(inline, artifact_dir) as server:
        assert server.pipeline is not None
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        tops = await top_scores(server.pipeline, server.pipeline.runtime, 0, 20)
        task.cancel()
        measured = sum(len(scores) for scores in tops.values())
        assert measured >= 20 and ticks >= measured, (ticks, measured)
