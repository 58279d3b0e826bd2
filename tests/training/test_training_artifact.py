"""The tiny end-to-end run: the artifact it writes, its round trips, and its quality."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from unirank.artifact import TASKS, Artifact, ArtifactError, Context, TaskType, load_artifact
from unirank.artifact.features import OUTPUT_NAME, input_names
from unirank.artifact.store import REQUIRED_FILES
from unirank.model.net import UniRankModel, build_model_from_checkpoint
from unirank.training.cli import main as cli_main
from unirank.training.config import TrainConfig
from unirank.training.evaluate import METRIC_ORDER
from unirank.training.export import random_inputs, torch_scores
from unirank.training.pipeline import evaluate_artifact, train_artifact
from unirank.training.plots import TASK_METRICS, TRAINING_CURVES


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-artifact")  # exists and is empty, as in the server's tests
    return train_artifact(TrainConfig.tiny(seed=0), out, progress=None)


@pytest.fixture(scope="module")
def artifact(artifact_dir: Path) -> Artifact:
    return load_artifact(artifact_dir)


@pytest.fixture(scope="module")
def model(artifact: Artifact) -> UniRankModel:
    return build_model_from_checkpoint(torch.load(artifact.torch_path, weights_only=True))


def test_artifact_verifies_and_lists_every_file(artifact: Artifact) -> None:
    files = artifact.manifest["files"]
    assert set(REQUIRED_FILES) <= set(files)
    assert {TRAINING_CURVES, TASK_METRICS} <= set(files)  # plots are checksummed too
    assert (artifact.path / TRAINING_CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_manifest_describes_the_run(artifact: Artifact, model: UniRankModel) -> None:
    manifest = artifact.manifest
    assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{8}", artifact.model_version)
    assert manifest["model_config"] == model.config.to_dict()
    assert manifest["encoder"] == {"max_history": 20, "max_query_tokens": 8}
    data = manifest["training_data"]
    assert (data["source"], data["data"], data["size"], data["seed"]) == ("synthetic", "synthetic", "tiny", 0)
    assert set(data["counts"]) == {spec.name for spec in TASKS}
    assert all(n > 0 for split in data["counts"].values() for n in split.values())


def test_tampered_file_is_refused(artifact_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact_dir, copy)
    with (copy / TRAINING_CURVES).open("ab") as handle:
        handle.write(b"!")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(copy)


def test_torch_checkpoint_and_onnx_agree(artifact: Artifact, model: UniRankModel) -> None:
    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(input_names(model.config.time_features))
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    for seed, shape in enumerate([(5, 20, 8, 40), (1, 3, 1, 7), (16, 1, 4, 300)]):
        inputs = random_inputs(model, *shape, seed=seed)
        (onnx_scores,) = session.run([OUTPUT_NAME], inputs.as_dict())
        np.testing.assert_allclose(onnx_scores, torch_scores(model, inputs), atol=1e-4, rtol=0)
        assert (onnx_scores[inputs.candidates == 0] <= -1e8).all()  # padding never outranks an item


def test_real_contexts_score_through_the_artifact_encoder(artifact: Artifact, model: UniRankModel) -> None:
    encoder = artifact.encoder()
    catalog = artifact.catalog
    item = catalog.items.key(1)
    contexts = [
        Context(TaskType.NOTIFICATION, user_id=catalog.users.key(1), history_item_ids=(item,)),
        Context(TaskType.RELATED_ITEMS, anchor_item_id=item),
        Context(TaskType.SEARCH, query=catalog.titles[1]),
        Context(TaskType.CATEGORY, category_id=catalog.categories.key(1)),
    ]
    encoded = [encoder.encode(c) for c in contexts]
    assert all(not e.unknown for e in encoded)
    candidates = np.tile(np.arange(1, 11), (4, 1))
    inputs = encoder.batch(encoded, candidates)
    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    (onnx_scores,) = session.run([OUTPUT_NAME], inputs.as_dict())
    np.testing.assert_allclose(onnx_scores, torch_scores(model, inputs), atol=1e-4, rtol=0)
    # The search row should like the item whose full title it typed.
    assert int(np.argmax(onnx_scores[2])) == 0


def test_retrieval_arrays_are_consistent(artifact: Artifact) -> None:
    retrieval, catalog = artifact.retrieval, artifact.catalog
    n = len(catalog.items)
    emb = retrieval.item_embeddings
    assert emb.shape[0] == n and emb.dtype == np.float32
    assert not emb[0].any()
    np.testing.assert_allclose(np.linalg.norm(emb[1:], axis=1), 1.0, atol=1e-5)
    related = retrieval.related_items
    assert related.shape == (n, 50) and not related[0].any()
    assert (related[1:] > 0).all()  # embedding neighbours fill where co-engagement is thin
    assert not (related[1:] == np.arange(1, n)[:, None]).any()  # never an item itself
    assert all(len(set(row)) == len(row) for row in related[1:].tolist())
    assert sorted(retrieval.popular_items.tolist()) == list(range(1, n))
    pop = np.asarray(catalog.popularity)
    assert (np.diff(pop[retrieval.popular_items]) <= 0).all()
    titles = catalog.title_token_matrix()
    for token in range(1, len(catalog.tokens), 7):
        items = retrieval.lexical(token)
        assert set(items.tolist()) == set(np.flatnonzero((titles == token).any(axis=1)).tolist())
        assert (np.diff(pop[items]) <= 0).all()
    cats = catalog.category_matrix()
    for category in range(1, len(catalog.categories)):
        items = retrieval.category(category)
        assert len(items) and set(items.tolist()) == set(
            np.flatnonzero((cats == category).any(axis=1)).tolist()
        )
        assert (np.diff(pop[items]) <= 0).all()


def test_metrics_json_has_every_task_scorer_and_reference(artifact: Artifact) -> None:
    metrics = artifact.metrics
    assert set(metrics["tasks"]) == {spec.name for spec in TASKS}
    for by_scorer in metrics["tasks"].values():
        assert set(by_scorer) == {"model", "popularity", "popularity_task_aware"}
        for values in by_scorer.values():
            assert set(values) == set(METRIC_ORDER)
            assert all(0.0 <= v <= 1.0 for v in values.values())
    for reference in metrics["score_reference"].values():
        assert len(reference["edges"]) == 11 and len(reference["fractions"]) == 10
        assert (np.diff(reference["edges"]) > 0).all()
        assert sum(reference["fractions"]) == pytest.approx(1.0)


def test_trained_model_beats_popularity(artifact: Artifact) -> None:
    tasks = artifact.metrics["tasks"]
    lifts = {
        name: (by["model"]["ndcg@10"], by["popularity"]["ndcg@10"], by["popularity_task_aware"]["ndcg@10"])
        for name, by in tasks.items()
    }
    # Global popularity is beaten on every task, by a wide margin (robust to seed noise) where the
    # candidate set is the catalogue or the new releases; a category row ranks only its category,
    # where popularity is strong already.
    assert all(model > 1.3 * pop for name, (model, pop, _) in lifts.items() if name != "category"), lifts
    assert lifts["category"][0] > 1.1 * lifts["category"][1], lifts
    # The task-aware rules are strong on a tiny catalogue; the model still wins most tasks.
    assert sum(model > aware for model, _, aware in lifts.values()) >= 3, lifts


def test_evaluate_reproduces_the_recorded_metrics(artifact_dir: Path, artifact: Artifact) -> None:
    again = evaluate_artifact(artifact_dir)
    for task, by_scorer in artifact.metrics["tasks"].items():
        for scorer, values in by_scorer.items():
            for metric, value in values.items():
                assert again["tasks"][task][scorer][metric] == pytest.approx(value, abs=1e-9), (
                    task,
                    scorer,
                    metric,
                )


def test_cli_evaluate_prints_json(artifact_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["evaluate", "--artifact", str(artifact_dir), "--data", "synthetic", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["tasks"]) == {spec.name for spec in TASKS}


def test_cli_rejects_unknown_data_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", "--data", "movielens:/nowhere", "--out", str(tmp_path / "a")]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert cli_main(["train", "--data", "movielens", "--out", str(tmp_path / "a")]) == 2
    assert "needs a directory" in capsys.readouterr().err
    assert cli_main(["train", "--data", "parquet:/x", "--out", str(tmp_path / "a")]) == 2
    assert "unknown --data" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_train_refuses_to_replace_a_directory_that_is_not_an_artifact(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        train_artifact(TrainConfig.tiny(), tmp_path, progress=None)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
