"""The offline promotion gate: a new version serves only if no served use-case is worse offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from unirank.artifact import ArtifactError
from unirank.artifact.store import init_repository, sha256_file

from ..conftest import profile_with, running_server
from .test_lifecycle import clone_version

Edit = Callable[[dict[str, Any]], None]


def publish(src: Path, dst: Path, version: str, edit: Edit) -> Path:
    """``src`` published as ``version`` with its metrics.json edited (checksum kept valid)."""
    clone_version(src, dst, version)
    metrics = json.loads((dst / "metrics.json").read_text())
    edit(metrics)
    (dst / "metrics.json").write_text(json.dumps(metrics))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["metrics.json"] = sha256_file(dst / "metrics.json")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def scale_search(factor: float) -> Edit:
    def edit(metrics: dict[str, Any]) -> None:
        metrics["tasks"]["search"]["model"]["ndcg@10"] *= factor

    return edit


def drop_search(metrics: dict[str, Any]) -> None:
    del metrics["tasks"]["search"]


def few_search_rows(metrics: dict[str, Any]) -> None:
    metrics["evaluation"]["rows"]["search"] = 10


CASES = {
    "no change": (lambda metrics: None, True, ""),
    "a small gain": (scale_search(1.02), True, ""),
    "a regression": (scale_search(0.8), False, "search: drops 20.0%"),
    "a missing task": (drop_search, False, "search: no offline ndcg@10"),
    "too few rows": (few_search_rows, False, "search: evaluated on 10 rows"),
    "a suspicious gain": (scale_search(2.5), False, "search: gains 150.0%"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_gate_judges_each_served_task(artifact_dir: Path, tmp_path: Path, case: str) -> None:
    edit, accepted, reason = CASES[case]
    repo = init_repository(tmp_path / "repo")
    clone_version(artifact_dir, repo / "v001", "v001")
    profile = profile_with(gate={"enabled": True})
    async with running_server(profile, repo) as server:
        publish(artifact_dir, repo / "v002", "v002", edit)
        if accepted:
            assert await server.reload() == "v002"
        else:
            with pytest.raises(ArtifactError, match="refused by the offline gate") as refused:
                await server.reload()
            assert reason in str(refused.value)
            assert server.pipeline is not None and server.pipeline.runtime.version == "v001"
        assert server.last_gate is not None and server.last_gate.accepted is accepted
        assert {row.task for row in server.last_gate.rows} == set(profile.tasks)


async def test_a_large_gain_passes_where_the_profile_allows_it(artifact_dir: Path, tmp_path: Path) -> None:
    repo = init_repository(tmp_path / "repo")
    clone_version(artifact_dir, repo / "v001", "v001")
    profile = profile_with(gate={"enabled": True}, tasks={"search": {"gate": {"allow_large_gain": True}}})
    async with running_server(profile, repo) as server:
        publish(artifact_dir, repo / "v002", "v002", scale_search(2.5))
        assert await server.reload() == "v002"


async def test_without_the_gate_any_sound_version_loads(artifact_dir: Path, tmp_path: Path) -> None:
    repo = init_repository(tmp_path / "repo")
    clone_version(artifact_dir, repo / "v001", "v001")
    async with running_server("cpu-realtime", repo) as server:
        publish(artifact_dir, repo / "v002", "v002", scale_search(0.5))
        assert await server.reload() == "v002" and server.last_gate is None
