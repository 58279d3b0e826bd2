"""Every kind of bad version published under live traffic, then a good one (issue 13, done-when):
no request fails, each bad version is refused and counted, the good one loads at its first poll."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path

import pytest

import unirank.server.app as app_module
from unirank.artifact.store import init_repository
from unirank.client import AsyncRecommenderClient, UniRankError

from ..conftest import running_server
from ..hardening.badversions import bad_graph, half_copied, metrics_as, publish
from ..hardening.test_bad_versions import POLL_S, polling_profile, wait_for


async def _traffic(
    client: AsyncRecommenderClient, item: str, stop: asyncio.Event, seen: Counter[str], errors: list[str]
) -> None:
    while not stop.is_set():
        try:
            for ranking in (await client.related_items(item), await client.search("zzqx")):
                seen[f"{ranking.model_version}/{ranking.fallback_reason or 'model'}"] += 1
        except UniRankError as error:
            errors.append(f"{error.code}: {error.message}")


@pytest.mark.timeout(120)
async def test_bad_versions_then_a_good_one_under_traffic(
    artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo)
    publish(artifact_dir, repo / "v001", "v001")
    away = tmp_path / "away"
    resolve = app_module.resolve_artifact

    def racing_resolve(path: str | Path) -> Path:
        """v007 is renamed out of the repository right after each listing finds it."""
        found = resolve(path)
        if found.name == "v007":
            found.rename(away)
        return found

    monkeypatch.setattr(app_module, "resolve_artifact", racing_resolve)
    async with (
        running_server(polling_profile(incomplete_timeout_s=0.3), repo) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        outcomes = server.telemetry.reload_outcomes
        item = server.pipeline.runtime.artifact.catalog.items.key(1)  # type: ignore[union-attr]
        stop, seen, errors = asyncio.Event(), Counter[str](), []
        callers = [asyncio.create_task(_traffic(client, item, stop, seen, errors)) for _ in range(4)]
        bad = {
            "v002": bad_graph("nan"),
            "v003": bad_graph("column"),
            "v004": bad_graph("transposed"),
            "v005": metrics_as([]),
        }
        for refused, (version, edit) in enumerate(bad.items(), start=1):
            publish(artifact_dir, repo / version, version, edit)
            await wait_for(lambda n=refused: server.reload_failures == n)
        half_copied(artifact_dir, repo / "v006", "v006")  # never completed: refused after 0.3 s
        await wait_for(lambda: server.reload_failures == 5)
        publish(artifact_dir, repo / "v007", "v007")  # vanishes as it is listed
        await wait_for(lambda: outcomes.get("unreadable", 0) >= 1)
        before = dict(outcomes)
        publish(artifact_dir, repo / "v008", "v008")
        await wait_for(lambda: server.reloads == 1)
        after = dict(outcomes)
        await asyncio.sleep(5 * POLL_S)
        stop.set()
        await asyncio.gather(*callers)
        info = await client.model_info()
    shutil.rmtree(away, ignore_errors=True)
    assert errors == [], errors[:3]
    assert info.model_version == "v008"
    # Only v001 and v008 ever answered, by the model (zzqx matches no title: that is its fallback).
    assert {key.split("/")[0] for key in seen} == {"v001", "v008"}
    assert {key.split("/")[1] for key in seen} <= {"model", "cold_start"}
    assert seen["v008/model"] > 0
    assert server.reload_failures == 5 and server.poll_errors == 0
    assert outcomes["refused"] == 5 and outcomes["incomplete"] >= 1 and outcomes["unreadable"] >= 1
    # The good version loaded at the first attempt to read it: within one poll of being published.
    assert Counter(after) - Counter(before) == Counter({"loaded": 1})
