"""A use-case the data cannot train is skipped before training, by every command, with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unirank.artifact import TASKS, load_artifact
from unirank.training.cli import main as cli_main
from unirank.training.config import TrainConfig
from unirank.training.coverage import task_coverage
from unirank.training.logwriter import write_logs
from unirank.training.synthetic import SyntheticConfig, generate

TASK_NAMES = [spec.name for spec in TASKS]
ENOUGH = {"train": 500, "validation": 100, "test": 100}
QUICK = ["--size", "tiny", "--set", "epochs=1", "--set", "steps_per_epoch=3", "--quiet"]


@pytest.fixture(scope="module")
def no_release_years(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny synthetic logs whose catalogue, like a music catalogue, has no release years."""
    log = generate(SyntheticConfig.preset("tiny"), 0)
    log.items.release_year[:] = 0
    return write_logs(log, tmp_path_factory.mktemp("no-years") / "logs")


def test_coverage_skips_what_cannot_be_trained_or_measured() -> None:
    counts = {name: dict(ENOUGH) for name in TASK_NAMES}
    counts["new_releases"] = {"train": 0, "validation": 0, "test": 0}
    counts["search"] = {"train": 500, "validation": 4, "test": 100}
    counts["category"] = {"train": 20, "validation": 100, "test": 100}
    weights = {**dict.fromkeys(TASK_NAMES, 1.0), "notification": 0.0}
    coverage = task_coverage(counts, TrainConfig(task_weights=weights))
    assert coverage.trained == ("related_items",)
    assert set(coverage.skipped) == {"notification", "search", "category", "new_releases"}
    assert "no labels" in coverage.skipped["new_releases"]
    assert "4 validation" in coverage.skipped["search"] and "min_eval_rows" in coverage.skipped["search"]
    assert "min_train_rows" in coverage.skipped["category"]
    assert coverage.skipped["notification"] == "task_weights gives it weight 0"
    applied = coverage.apply(TrainConfig())
    assert applied.task_weights["new_releases"] == 0.0 and applied.task_weights["related_items"] == 1.0


def test_coverage_refuses_data_that_trains_nothing() -> None:
    empty = {name: {"train": 0, "validation": 0, "test": 0} for name in TASK_NAMES}
    with pytest.raises(ValueError, match="no use-case has enough labels"):
        task_coverage(empty, TrainConfig())
    counts = {name: dict(ENOUGH) for name in TASK_NAMES}
    counts["search"] = {"train": 0, "validation": 0, "test": 0}
    with pytest.raises(ValueError, match="no batch share"):
        task_coverage(counts, TrainConfig(task_ratios={"search": 1.0}))


@pytest.mark.parametrize(
    "flags",
    [
        ["--set", "patience=0"],
        ["--set", "split_fractions=[0.5,0.5,0.5]"],
        ["--task-weights", "notification=0,related_items=0,search=0,category=0,new_releases=0"],
        ["--set", "dim=0"],
    ],
)
def test_impossible_configurations_fail_before_any_data_is_read(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["compare", "--data", "logs:/nonexistent", "--no-peers", "--quiet", *flags]) == 1
    assert "error:" in capsys.readouterr().err


def test_train_and_evaluate_skip_new_releases_without_release_years(
    no_release_years: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifact"
    assert cli_main(["train", "--data", f"logs:{no_release_years}", "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "skipped new_releases: no labels in the data: no item has a release year" in printed
    artifact = load_artifact(out)
    assert artifact.manifest["trained_tasks"] == TASK_NAMES[:-1]
    assert "release year" in artifact.manifest["skipped_tasks"]["new_releases"]
    assert set(artifact.metrics["tasks"]) == set(TASK_NAMES[:-1])
    assert artifact.manifest["training"]["config"]["task_weights"]["new_releases"] == 0.0

    assert cli_main(["evaluate", "--artifact", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics["tasks"]) == set(TASK_NAMES[:-1]) and "new_releases" in metrics["skipped_tasks"]


def test_compare_without_release_years_skips_new_releases_before_training(
    no_release_years: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report = tmp_path / "compare.json", tmp_path / "quality.md"
    args = ["compare", "--data", f"logs:{no_release_years}", "--seeds", "1", "--no-peers"]
    args += [*QUICK[:-1], "--rows-per-task", "60", "--json", str(out), "--report", str(report)]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    skipped_at = captured.err.index("[compare] skipped new_releases: no labels in the data")
    assert skipped_at < captured.err.index("training on")  # said before the first model trains
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == set(TASK_NAMES[:-1])
    assert "release year" in result["skipped_tasks"]["new_releases"]
    assert not any(run["variant"].endswith("new_releases") for run in result["runs"])
    assert "SKIPPED  new_releases" in captured.out
    assert "- **new_releases**: no labels in the data" in report.read_text()
    assert np.isfinite(result["tasks"]["notification"]["unified"]["ndcg@10"])
