"""A use-case whose head the artifact records as untrained is answered like an unserved one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unirank.artifact import TASKS, load_artifact
from unirank.client import AsyncRecommenderClient, UniRankError
from unirank.training.export import write_artifact

from ..conftest import running_server


@pytest.fixture(scope="module")
def without_new_releases(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session artifact, rewritten as trained on data without new-releases labels."""
    import torch

    from unirank.model.net import build_model_from_checkpoint

    artifact = load_artifact(artifact_dir)
    model = build_model_from_checkpoint(torch.load(artifact.torch_path, weights_only=True))
    out = tmp_path_factory.mktemp("untrained") / "artifact"
    out.mkdir()
    metrics = json.loads(json.dumps(artifact.metrics))
    for key in ("tasks", "score_reference"):
        metrics[key].pop("new_releases", None)
    write_artifact(
        out,
        model,
        artifact.catalog,
        artifact.retrieval,
        metrics,
        encoder_config=artifact.manifest["encoder"],
        training_data=artifact.manifest["training_data"],
        extra={
            "trained_tasks": [spec.name for spec in TASKS if spec.name != "new_releases"],
            "skipped_tasks": {"new_releases": "no labels in the data: no item has a release year"},
        },
        activity=artifact.activity,
    )
    return out


async def test_a_task_without_a_trained_head_answers_failed_precondition(without_new_releases: Path) -> None:
    artifact = load_artifact(without_new_releases)
    user = artifact.catalog.users.key(1)
    async with (
        running_server("cpu-realtime", without_new_releases) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        with pytest.raises(UniRankError) as error:
            await client.new_releases(user)
        ranking = await client.notification(user)
        info = await client.model_info()
    assert error.value.code == "FAILED_PRECONDITION"
    assert "no trained head for new_releases" in error.value.message
    assert not ranking.fallback and ranking.items
    assert {t.task_type for t in info.tasks if t.served} == {spec.name for spec in TASKS} - {"new_releases"}
