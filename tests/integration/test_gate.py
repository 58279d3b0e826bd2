"""The offline promotion gate: a new version serves only if no served use-case is worse offline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from unirank.artifact import ArtifactError
from unirank.artifact.store import init_repository, sha256_file
from unirank.client import AsyncRecommenderClient
from unirank.client.cli import main as cli_main
from unirank.server.app import UniRankServer
from unirank.server.config import TelemetrySection
from unirank.server.telemetry import Telemetry

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
        assert server.gate is not None and server.gate.last is not None
        assert server.gate.last.accepted is accepted
        assert {row.task for row in server.gate.last.rows} == set(profile.tasks)


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
        assert await server.reload() == "v002"
        assert server.gate is not None and server.gate.last is None


def gate_points(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    """``unirank.gate.decisions`` by (use-case, verdict), as the metric reader collects them."""
    data = reader.get_metrics_data()
    out = {}
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "unirank.gate.decisions":
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        key = (str(attributes["unirank.task_type"]), str(attributes["unirank.gate.verdict"]))
                        out[key] = int(point.value)  # type: ignore[union-attr]
    return out


async def test_the_decision_is_visible_in_model_info_the_cli_and_a_metric(
    artifact_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = init_repository(tmp_path / "repo")
    clone_version(artifact_dir, repo / "v001", "v001")
    profile = profile_with(gate={"enabled": True})
    reader = InMemoryMetricReader()
    telemetry = Telemetry.create(profile, TelemetrySection(), environ={}, metric_readers=[reader])
    server = UniRankServer(profile, repo, host="127.0.0.1", port=0, telemetry=telemetry)
    await server.start()
    try:
        async with AsyncRecommenderClient(server.address) as client:
            assert (await client.model_info()).last_gate is None  # nothing judged yet
            publish(artifact_dir, repo / "v002", "v002", scale_search(0.8))
            with pytest.raises(ArtifactError, match="refused by the offline gate"):
                await server.reload()
            info = await client.model_info()
        assert info.model_version == "v001"  # the refused version never serves
        gate = info.last_gate
        assert gate is not None
        assert (gate.model_version, gate.serving_version, gate.accepted) == ("v002", "v001", False)
        assert gate.decided_unix_ms > 0
        verdicts = {v.task: v for v in gate.tasks}
        assert set(verdicts) == set(profile.tasks)
        search = verdicts["search"]
        assert (search.metric, search.passed, search.source) == ("ndcg@10", False, "metrics")
        assert search.serving_value is not None and search.candidate_value is not None
        assert search.candidate_value == pytest.approx(search.serving_value * 0.8)
        assert search.relative_change == pytest.approx(-0.2)
        assert search.rows >= 100 and "drops 20.0%" in search.reason
        others = [v for task, v in verdicts.items() if task != "search"]
        assert all(v.passed and v.relative_change == pytest.approx(0.0) for v in others)

        code = await asyncio.to_thread(cli_main, ["info", "--target", server.address])
        out = capsys.readouterr().out
        assert code == 0
        assert "last gate: v002 REFUSED against v001" in out
        gate_lines = out.split("last gate:")[1].splitlines()
        search_line = next(line for line in gate_lines if line.startswith("search "))
        assert "-20.0%" in search_line and "REFUSE" in search_line and "drops 20.0%" in search_line

        expected = {(task, "pass") for task in profile.tasks if task != "search"} | {("search", "refuse")}
        assert gate_points(reader) == dict.fromkeys(expected, 1)
    finally:
        await server.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def validation_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session artifact's synthetic data (tiny, seed 0) in the UniRank log format."""
    from unirank.training.logwriter import write_logs
    from unirank.training.synthetic import SyntheticConfig, generate

    return write_logs(
        generate(SyntheticConfig.preset("tiny"), seed=0), tmp_path_factory.mktemp("vlog") / "logs"
    )


def scramble_items(version_dir: Path) -> None:
    """Permute the ONNX graph's item embeddings (a worse model; checksum kept valid)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(version_dir / "model.onnx")
    order = np.random.default_rng(0).permutation
    for init in model.graph.initializer:
        if init.name in ("item_rows", "item_columns"):
            table = numpy_helper.to_array(init).copy()
            table[1:] = table[1:][order(len(table) - 1)]
            init.CopyFrom(numpy_helper.from_array(table, init.name))
    onnx.save(model, version_dir / "model.onnx")
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = sha256_file(version_dir / "model.onnx")
    (version_dir / "manifest.json").write_text(json.dumps(manifest))


def claim_better(metrics: dict[str, Any]) -> None:
    for task in metrics["tasks"].values():
        task["model"]["ndcg@10"] *= 1.02


@pytest.mark.parametrize("named", [True, False])
async def test_a_version_better_on_paper_but_worse_on_the_validation_log(
    artifact_dir: Path, tmp_path: Path, validation_log: Path, named: bool
) -> None:
    """Its metrics.json claims +2 % everywhere, its scrambled item embeddings rank worse: refused
    where the profile names the validation log (both versions re-scored on it), accepted where not."""
    repo = init_repository(tmp_path / "repo")
    clone_version(artifact_dir, repo / "v001", "v001")
    gate: dict[str, Any] = {"enabled": True}
    if named:
        gate |= {"validation_logs": str(validation_log), "max_rows": 200}
    profile = profile_with(gate=gate)
    async with running_server(profile, repo) as server:
        scramble_items(publish(artifact_dir, repo / "v002", "v002", claim_better))
        if not named:
            assert await server.reload() == "v002"
            assert server.gate is not None and server.gate.last is not None
            assert {row.source for row in server.gate.last.rows} == {"metrics"}
            return
        with pytest.raises(ArtifactError, match="refused by the offline gate"):
            await server.reload()
        assert server.pipeline is not None and server.pipeline.runtime.version == "v001"
        async with AsyncRecommenderClient(server.address) as client:
            gate_info = (await client.model_info()).last_gate
    assert gate_info is not None and not gate_info.accepted
    verdicts = {v.task: v for v in gate_info.tasks}
    assert {v.source for v in verdicts.values()} == {"validation_log"}
    assert all(v.rows == 200 for v in verdicts.values())
    search = verdicts["search"]
    assert not search.passed and "drops" in search.reason
    assert search.relative_change is not None and search.relative_change < -0.05
    assert search.serving_value is not None and search.serving_value > 0.3  # a real ranking, not noise
