"""``unirank tune``: a search on validation only, written as a config that train and compare accept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unirank.artifact import load_artifact
from unirank.training import evaluate as evaluate_module
from unirank.training.cli import main as cli_main
from unirank.training.examples import SPLITS
from unirank.training.sources import parse_data_spec
from unirank.training.tune import load_config_file, tuned_on

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"

QUICK = [
    "--size",
    "tiny",
    "--set",
    "epochs=2",
    "--set",
    "steps_per_epoch=2",
    "--set",
    "validation_rows_per_task=100",
    "--quiet",
]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("optuna")
    out = tmp_path_factory.mktemp("tune") / "tuned.json"
    ranked: set[str] = set()
    rank_rows = evaluate_module.rank_rows

    def spy(scorer, dataset, rows, *args, **kwargs):  # type: ignore[no-untyped-def]
        ranked.update(SPLITS[int(s)] for s in np.unique(dataset.split[rows]))
        return rank_rows(scorer, dataset, rows, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate_module, "rank_rows", spy)
        args = ["tune", "--data", "synthetic", "--budget-minutes", "5", "--trials", "2", "--single-task"]
        assert cli_main([*args, "--out", str(out), *QUICK]) == 0
    assert ranked == {"validation"}  # every trial is scored on validation; test is never ranked
    return out


def test_tune_searches_every_model_on_validation_and_writes_a_config(tuned: Path) -> None:
    document = json.loads(tuned.read_text())
    assert document["format"] == "unirank-tuned-config" and document["version"] == 1
    assert document["trials"]["unified"]["complete"] + document["trials"]["unified"]["pruned"] == 2
    assert set(document["single_task"]) == {
        "notification",
        "related_items",
        "search",
        "category",
        "new_releases",
    }
    assert 0.0 < document["validation"]["unified"] <= 1.0
    assert document["unified"]["steps_per_epoch"] == 2  # the flags given stay part of the config
    assert document["tuned_on"] == "synthetic --size tiny" and "data" not in document


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_the_shipped_configs_load_and_hold_no_data_path(path: Path) -> None:
    document = load_config_file(path)
    assert "data" not in document  # the data always comes from --data
    for text in _strings(document):
        assert not text.startswith(("/", "~")) and "../" not in text, text


def test_a_config_records_what_it_was_tuned_on_without_its_path() -> None:
    spec = parse_data_spec("movielens:/somewhere/else/movielens-small/")
    assert tuned_on(spec, "default") == "movielens (movielens-small)"
    assert tuned_on(parse_data_spec("synthetic"), "sparse") == "synthetic --size sparse"


def test_train_and_compare_accept_the_tuned_config(
    tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads(tuned.read_text())
    out = tmp_path / "artifact"
    assert (
        cli_main(
            ["train", "--data", "synthetic", "--size", "tiny", "--config", str(tuned), "--out", str(out)]
        )
        == 0
    )
    config = load_artifact(out).manifest["training"]["config"]
    for field, value in document["unified"].items():
        assert config[field] == (tuple(value) if isinstance(value, list) else value), field
    result = tmp_path / "compare.json"
    args = ["compare", "--data", "synthetic", "--seeds", "1", "--no-peers", "--config", str(tuned)]
    assert cli_main([*args, "--rows-per-task", "50", "--json", str(result), *QUICK]) == 0
    compared = json.loads(result.read_text())
    assert compared["single_task_config"] == document["single_task"]
    capsys.readouterr()


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"format": "something-else", "version": 1}),
        json.dumps({"format": "unirank-tuned-config", "version": 1, "unified": {"magic": 1}}),
        json.dumps({"format": "unirank-tuned-config", "version": 1, "unified": {"dim": 0}}),
        json.dumps({"format": "unirank-tuned-config", "version": 1, "single_task": {"radio": {}}}),
    ],
)
def test_a_bad_config_file_fails_before_anything_runs(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert (
        cli_main(
            ["train", "--data", "logs:/nonexistent", "--config", str(path), "--out", str(tmp_path / "a")]
        )
        == 2
    )
    assert "--config" in capsys.readouterr().err


def test_tune_needs_a_positive_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["tune", "--data", "synthetic", "--budget-minutes", "0", "--out", str(tmp_path / "t.json")]
    assert cli_main(args) == 1
    assert "budget" in capsys.readouterr().err


@pytest.mark.parametrize("time_features", [True, False])
def test_the_search_covers_the_time_features_and_reproduces_the_given_config(time_features: bool) -> None:
    optuna = pytest.importorskip("optuna")
    from unirank.training.config import TrainConfig
    from unirank.training.tune import _as_params, suggest

    tasks = ("notification", "category")
    given = TrainConfig(time_features=time_features, recent_half_life_days=7.0)
    values = suggest(optuna.trial.FixedTrial(_as_params(given, tasks)), given, tasks)
    assert values["time_features"] is time_features
    assert values.get("recent_half_life_days") == (7.0 if time_features else None)
