"""The traffic simulator's click model, and one simulated session through a real server."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

from unirank.artifact import load_artifact
from unirank.client import Notification, RecommendationRequest

from ..conftest import running_server

ROOT = Path(__file__).resolve().parents[2]


def _simulator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "simulate_traffic", ROOT / "scripts" / "simulate_traffic.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["simulate_traffic"] = module
    spec.loader.exec_module(module)
    return module


def test_clicks_favour_the_top_and_the_truth() -> None:
    sim = _simulator()
    items = [f"i{n}" for n in range(10)]
    visit = sim.Visit("notification", RecommendationRequest(Notification(), user_id="u"), frozenset({"i4"}))
    rng = random.Random(0)
    clicks = [0] * 10
    for _ in range(4000):
        for event in sim.user_feedback(visit, items, "imp", sim.ClickModel(), rng):
            assert event.impression_id == "imp" and items[event.position - 1] == event.item_id
            if event.event_type == "click":
                clicks[event.position - 1] += 1
    assert clicks[0] > clicks[1] > clicks[2]  # position bias among irrelevant items
    assert clicks[4] > 5 * clicks[3]  # the truth item is clicked far more at a lower position


async def test_a_simulated_session_is_attributed(artifact_dir: Path) -> None:
    sim = _simulator()
    artifact = load_artifact(artifact_dir)
    catalog = artifact.catalog
    popular = [catalog.items.key(int(i)) for i in artifact.retrieval.popular_items[:50]]
    visits = [
        sim.Visit(
            "notification",
            RecommendationRequest(Notification(), user_id=catalog.users.key(u)),
            frozenset(popular),
        )
        for u in range(1, 31)
    ]
    async with running_server("cpu-realtime", artifact_dir) as server:
        counted = await asyncio.to_thread(sim.simulate, server.address, visits, sim.ClickModel(), 0)
        kpis = await asyncio.to_thread(sim.read_kpis, server.address)
    assert counted["requests"] == 30 and counted["errors"] == 0 and counted["unattributed"] == 0
    assert counted["attributed"] > 0
    notification = kpis["notification"]
    assert notification["impressions"] == 30
    assert notification["ctr"] > 0 and 0 < notification["play_rate"] <= notification["ctr"]
    assert "notification" in sim.format_table({"trained": kpis})
