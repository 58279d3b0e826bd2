"""Partial refit (``unirank train --warm-start``): a bounded fine-tune of an artifact on new logs
that keeps the parent's catalogue and inputs, maps what the parent does not know, and refuses a
tampered parent before reading its weights."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch

from unirank.artifact import TASKS, load_artifact
from unirank.artifact.store import MANIFEST, MODEL_ONNX, MODEL_TORCH
from unirank.training.cli import main as cli_main
from unirank.training.config import WARM_START_LR_SCALE
from unirank.training.logwriter import write_logs
from unirank.training.pipeline import evaluate_artifact
from unirank.training.sources import load_logs
from unirank.training.warmstart import load_parent, refit_config

MAX_STEPS = 7
NEW_ITEM_PLAYS = 5
NEW_USER_PLAYS = 12
MARCH_2026 = 1_772_323_200  # 2026-03-01 UTC, inside the synthetic logs' time range


def _append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    with path.open("a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([[row.get(name, "") for name in header] for row in rows])


@pytest.fixture(scope="module")
def new_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parent's own logs (synthetic tiny, seed 0) plus what a parent cannot know: a new item
    (played 5 times, and the anchor of one related click), a click in a new category, and a user
    the parent never saw (12 plays of known items)."""
    log = load_logs("synthetic", size="tiny", seed=0)
    out = write_logs(log, tmp_path_factory.mktemp("new-logs"))
    known = log.items.item_ids
    _append_rows(
        out / "items.csv",
        [
            {"item_id": "brand-new", "title": "Brand New Thing", "categories": log.category_ids[0]},
            {"item_id": "new-genre-item", "title": "Odd One", "categories": "new-genre"},
        ],
    )
    events: list[dict[str, Any]] = [
        {"user_id": log.user_ids[u], "item_id": "brand-new", "timestamp": MARCH_2026 + u} for u in range(5)
    ]
    events.append(
        {
            "user_id": log.user_ids[7],
            "item_id": known[3],
            "timestamp": MARCH_2026 + 99,
            "event_type": "related_click",
            "anchor_item_id": "brand-new",
        }
    )
    events.append(
        {
            "user_id": log.user_ids[8],
            "item_id": known[4],
            "timestamp": MARCH_2026 + 98,
            "event_type": "category_click",
            "category": "new-genre",
        }
    )
    events += [
        {"user_id": "never-seen", "item_id": known[10 + k], "timestamp": MARCH_2026 + 3600 * k}
        for k in range(NEW_USER_PLAYS)
    ]
    _append_rows(out / "interactions.csv", events)
    return out


@pytest.fixture(scope="module")
def refit(artifact_dir: Path, new_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The refit written by the real command line, and what it printed."""
    out = tmp_path_factory.mktemp("refit") / "v2"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli_main(
            [
                "train",
                "--warm-start",
                str(artifact_dir),
                "--data",
                f"logs:{new_logs}",
                "--max-steps",
                str(MAX_STEPS),
                "--out",
                str(out),
                "--quiet",
            ]
        )
    assert code == 0, stdout.getvalue()
    return out, stdout.getvalue()


def test_refit_is_a_new_version_that_records_its_parent(artifact_dir: Path, refit: tuple[Path, str]) -> None:
    out, printed = refit
    parent, child = load_artifact(artifact_dir), load_artifact(out)  # both verify
    assert child.model_version != parent.model_version
    assert child.manifest["warm_started_from"] == parent.model_version
    warm = child.manifest["warm_start"]
    assert warm["parent_version"] == parent.model_version
    assert warm["parent_path"] == str(artifact_dir.resolve())
    assert warm["learning_rate"] == pytest.approx(
        parent.manifest["training"]["config"]["learning_rate"] * WARM_START_LR_SCALE
    )
    assert set(warm["parent_test_metrics"]) == {spec.name for spec in TASKS}
    assert f"warm-started from {parent.model_version}, {MAX_STEPS} steps" in printed
    # Metrics are written as by a normal training, for every task.
    metrics = json.loads((out / "metrics.json").read_text())["tasks"]
    assert set(metrics) == {spec.name for spec in TASKS}
    assert all(0.0 <= metrics[t]["model"]["ndcg@10"] <= 1.0 for t in metrics)


def test_refit_is_bounded_by_max_steps(refit: tuple[Path, str]) -> None:
    manifest = load_artifact(refit[0]).manifest
    # The tiny preset validates once per pass over the training rows (> 7 steps): one partial epoch.
    assert manifest["training"]["steps"] == MAX_STEPS
    assert manifest["warm_start"]["steps"] == manifest["warm_start"]["max_steps"] == MAX_STEPS
    assert manifest["training"]["epochs_run"] == 1


def test_refit_keeps_the_parents_vocabularies_and_inputs(artifact_dir: Path, refit: tuple[Path, str]) -> None:
    out = refit[0]
    parent = load_artifact(artifact_dir).catalog.to_json()
    child = load_artifact(out).catalog.to_json()
    assert "brand-new" not in child["items"]
    for key in parent:
        if key != "popularity":  # a statistic of the logs, recomputed from the new ones
            assert child[key] == parent[key], key
    assert load_artifact(out).manifest["model_config"] == load_artifact(artifact_dir).manifest["model_config"]
    assert load_artifact(out).manifest["encoder"] == load_artifact(artifact_dir).manifest["encoder"]
    sessions = [
        ort.InferenceSession(str(path / MODEL_ONNX), providers=["CPUExecutionProvider"])
        for path in (artifact_dir, out)
    ]
    signatures = [[(i.name, i.type) for i in session.get_inputs()] for session in sessions]
    assert signatures[0] == signatures[1]


def test_refit_changes_the_weights(artifact_dir: Path, refit: tuple[Path, str]) -> None:
    parent = torch.load(artifact_dir / MODEL_TORCH, weights_only=True)["state_dict"]
    child = torch.load(refit[0] / MODEL_TORCH, weights_only=True)["state_dict"]
    assert parent.keys() == child.keys()
    changed = [name for name in parent if not torch.equal(parent[name], child[name])]
    assert "item_emb.weight" in changed and any(name.startswith("heads.") for name in changed)
    # The MF score's table is the parent's: fitted once on the parent's training plays, never trained.
    assert "item_factors" in parent and parent["item_factors"].abs().sum() > 0
    assert torch.equal(child["item_factors"], parent["item_factors"])


def test_what_the_parent_does_not_know_is_dropped_and_counted(refit: tuple[Path, str]) -> None:
    out, printed = refit
    mapping = load_artifact(out).manifest["training_data"]["mapped_onto_parent"]
    assert mapping["unknown_item"] == NEW_ITEM_PLAYS
    assert mapping["unknown_anchor"] == 1
    assert mapping["unknown_category"] == 1
    assert mapping["new_items"] == 2
    assert mapping["interactions"] - mapping["kept"] == NEW_ITEM_PLAYS + 2
    # The new user is kept: the model ranks from history (user id input 0 is the anonymous user).
    assert mapping["unknown_users"] == 1
    assert mapping["unknown_user_interactions"] == NEW_USER_PLAYS
    assert f"dropped {NEW_ITEM_PLAYS} with items unknown to the parent, 1 with unknown anchors" in printed


def test_evaluate_reproduces_the_refits_metrics(refit: tuple[Path, str]) -> None:
    out = refit[0]
    recorded = json.loads((out / "metrics.json").read_text())
    assert evaluate_artifact(out) == recorded


def test_a_tampered_parent_is_refused_before_its_weights_are_read(
    artifact_dir: Path, new_logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(artifact_dir, tampered)
    state = bytearray((tampered / MODEL_TORCH).read_bytes())
    state[len(state) // 2] ^= 0xFF
    (tampered / MODEL_TORCH).write_bytes(bytes(state))
    out = tmp_path / "out"
    code = cli_main(
        ["train", "--warm-start", str(tampered), "--data", f"logs:{new_logs}", "--out", str(out), "--quiet"]
    )
    assert code == 1
    assert f"checksum mismatch for {MODEL_TORCH}" in capsys.readouterr().err
    assert not out.exists()


def test_a_parent_without_a_manifest_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "parent").mkdir()
    out = str(tmp_path / "out")
    code = cli_main(["train", "--warm-start", str(tmp_path / "parent"), "--data", "synthetic", "--out", out])
    assert code == 1
    assert f"no {MANIFEST}" in capsys.readouterr().err


def test_a_refit_names_its_logs(
    artifact_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["train", "--warm-start", str(artifact_dir), "--out", str(tmp_path / "out")])
    assert code == 1
    assert "--warm-start needs --data" in capsys.readouterr().err


def test_the_models_shape_stays_the_parents(artifact_dir: Path) -> None:
    parent = load_parent(artifact_dir)
    with pytest.raises(ValueError, match="keeps the parent's dim"):
        refit_config(parent, {"dim": parent.config.dim * 2})
    config = refit_config(parent, {"dim": parent.config.dim, "learning_rate": 5e-4, "max_steps": 3})
    assert (config.dim, config.learning_rate, config.max_steps) == (parent.config.dim, 5e-4, 3)


def test_epochs_do_not_bound_a_refit(
    artifact_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(
        [
            "train",
            "--warm-start",
            str(artifact_dir),
            "--data",
            "synthetic",
            "--epochs",
            "3",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1
    assert "--max-steps, not --epochs" in capsys.readouterr().err
