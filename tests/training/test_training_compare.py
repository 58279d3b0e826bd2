"""``unirank compare``: every method on the same rows, summarised as the issue's JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unirank.artifact import TASKS
from unirank.training.cli import main as cli_main
from unirank.training.compare import model_jobs
from unirank.training.compare_report import JobResult, summarise
from unirank.training.config import TrainConfig

TASK_NAMES = [spec.name for spec in TASKS]


def _metrics(value: float) -> dict[str, float]:
    return {"ndcg@10": value, "recall@10": 2 * value, "mrr": value / 2, "coverage@10": 0.5}


def test_jobs_give_every_model_the_same_budget() -> None:
    config = TrainConfig(epochs=3, steps_per_epoch=8, patience=2)
    jobs = model_jobs(config, [0, 1], ["no_imputation"])
    assert len(jobs) == 2 * (3 + len(TASK_NAMES))
    for job in jobs:
        steps = job.config.epochs * (job.config.steps_per_epoch or 0)
        assert (steps, job.config.batch_size) == (24, 512)  # the same budget for every model
    single = next(j for j in jobs if j.variant == "single_task:search")
    # ... but validated about T times as often (as often per row of its task as the unified model):
    # every round(8 / T) steps, with patience scaled to the same number of rows.
    per_epoch = round(8 / len(TASK_NAMES))
    assert (single.config.steps_per_epoch, single.config.patience) == (per_epoch, 2 * 8 // per_epoch)
    assert single.tasks == ("search",) and single.config.task_weights["search"] == 1.0
    assert sum(single.config.task_weights.values()) == 1.0
    assert next(j for j in jobs if j.variant == "no_task_type").config.use_task_type is False
    assert next(j for j in jobs if j.variant == "no_imputation").config.impute_context is False


def test_ablation_seeds_trains_the_ablations_on_the_first_seeds_only() -> None:
    config = TrainConfig(epochs=3, steps_per_epoch=8, patience=2)
    jobs = model_jobs(config, [0, 1, 2], ["no_imputation"], ablation_seeds=1)
    by_variant: dict[str, list[int]] = {}
    for job in jobs:
        by_variant.setdefault(job.variant, []).append(job.seed)
    assert by_variant["unified"] == [0, 1, 2] and by_variant["single_task:search"] == [0, 1, 2]
    assert by_variant["no_task_type"] == [0] and by_variant["no_imputation"] == [0]
    assert len(jobs) == 3 * (1 + len(TASK_NAMES)) + 2


def test_summary_has_means_std_deltas_and_targets() -> None:
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        runs.append(JobResult("unified", seed, {t: _metrics(0.3 + shift) for t in TASK_NAMES}, 1, 1, 1, 1.0))
        runs.append(JobResult("no_task_type", seed, {t: _metrics(0.25) for t in TASK_NAMES}, 1, 1, 1, 1.0))
        for t in TASK_NAMES:
            runs.append(
                JobResult(
                    f"single_task:{t}", seed, {t: _metrics(0.35 if t == "search" else 0.2)}, 1, 1, 1, 1.0
                )
            )
    popularity = {t: _metrics(0.1) for t in TASK_NAMES}
    peers = {"notification": {"als": [_metrics(0.2), _metrics(0.4)]}, "search": {"bm25": [_metrics(0.5)] * 2}}
    result = summarise(runs, popularity, peers)
    notification = result["tasks"]["notification"]
    assert notification["unified"]["ndcg@10"] == pytest.approx(0.31)
    assert result["std"]["notification"]["unified"]["ndcg@10"] == pytest.approx(0.0141421, rel=1e-4)
    assert notification["peers"]["als"]["ndcg@10"] == pytest.approx(0.3)
    assert set(notification) == {"unified", "single_task", "no_task_type", "popularity", "peers"}
    assert result["delta"]["notification"]["single_task"]["ndcg@10"] == pytest.approx(0.31 / 0.2 - 1)
    assert result["delta"]["notification"]["peers"]["als"]["ndcg@10"] == pytest.approx(0.31 / 0.3 - 1)
    targets = result["targets"]
    assert targets["notification: unified >= best peer (als)"]["pass"]
    assert not targets["search: unified >= best peer (bm25)"]["pass"]
    assert not targets["search: unified >= single_task"]["pass"]
    assert targets["category: unified > popularity"]["pass"]


def test_compare_end_to_end_on_tiny_synthetic_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("implicit")
    pytest.importorskip("rank_bm25")
    out = tmp_path / "compare.json"
    report = tmp_path / "quality.md"
    args = ["--data", "synthetic", "--size", "tiny", "--seeds", "2", "--workers", "2", "--quiet"]
    args += ["--ablation-seeds", "1"]
    args += ["--set", "epochs=2", "--set", "steps_per_epoch=6", "--set", "validation_rows_per_task=100"]
    args += ["--rows-per-task", "150", "--json", str(out), "--report", str(report)]
    assert cli_main(["compare", *args]) == 0
    printed = capsys.readouterr().out
    assert "unified" in printed and "peer:als" in printed
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == set(TASK_NAMES)
    for task, by in result["tasks"].items():
        assert {"unified", "single_task", "popularity", "no_task_type", "peers"} <= set(by)
        assert set(by["unified"]) >= {"ndcg@10", "recall@10", "mrr"}
        assert set(result["std"][task]["unified"]) == set(by["unified"])
    assert set(result["tasks"]["notification"]["peers"]) == {"als", "bpr", "item_knn"}
    assert set(result["tasks"]["related_items"]["peers"]) == {"item_knn", "co_occurrence"}
    assert set(result["tasks"]["search"]["peers"]) == {"bm25"}
    # per seed: unified and one single-task model per task; no_task_type on seed 0 only
    assert len(result["runs"]) == 2 * (1 + len(TASK_NAMES)) + 1
    assert [run["seed"] for run in result["runs"] if run["variant"] == "no_task_type"] == [0]
    assert result["protocol"]["test_rows"]["search"] == 150
    text = report.read_text()
    assert "no_task_type: seed 0 only (--ablation-seeds 1" in text
    assert "| notification | **unified** |" in text and "## Targets" in text
    assert (tmp_path / "quality" / "ndcg.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_rejects_unknown_ablations(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["compare", "--data", "synthetic", "--ablation", "magic", "--no-peers", "--quiet"]) == 1
    assert "unknown ablations" in capsys.readouterr().err


def test_compare_rejects_more_ablation_seeds_than_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data", "synthetic", "--seeds", "2", "--ablation-seeds", "3", "--no-peers", "--quiet"]
    assert cli_main(["compare", *args]) == 1
    assert "--ablation-seeds" in capsys.readouterr().err


def test_one_report_for_several_data_sets_names_their_skipped_use_cases(tmp_path: Path) -> None:
    from unirank.training.quality import main as quality_main

    paths = []
    for name, tasks in (("movielens:ml", TASK_NAMES), ("synthetic", TASK_NAMES[:-1])):
        runs = [JobResult("unified", 0, {t: _metrics(0.3) for t in tasks}, 1, 1, 1, 1.0)]
        runs += [JobResult(f"single_task:{t}", 0, {t: _metrics(0.2)}, 1, 1, 1, 1.0) for t in tasks]
        result = summarise(runs, {t: _metrics(0.1) for t in tasks}, {})
        result.update(data=name, seeds=[0], seconds=60.0, config={"size": "sparse"}, runs=[])
        if len(tasks) < len(TASK_NAMES):
            result["skipped_tasks"] = {"new_releases": "no labels in the data: no item has a release year"}
        paths.append(tmp_path / f"{len(paths)}.json")
        paths[-1].write_text(json.dumps(result))
    report = tmp_path / "quality.md"
    assert quality_main([str(report), *map(str, paths)]) == 0
    text = report.read_text()
    assert "## `movielens:ml`" in text and "## `synthetic --size sparse`" in text
    assert "| `synthetic --size sparse` | 8 of 8 | new_releases |" in text  # no peers: 2 targets per task
    assert "- **new_releases**: no labels in the data: no item has a release year" in text
    assert (tmp_path / "quality" / "synthetic-sparse" / "ndcg.png").read_bytes()[:4] == b"\x89PNG"
    assert "(quality/ml/ndcg.png)" in text


def test_compare_trains_its_models_with_what_unirank_train_gives_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The models compared are the model `unirank train` ships: with the training split's
    # co-engagement (its co-engagement features), and with the training plays an ALS init fits.
    import unirank.training.train as train_module
    from unirank.training.compare import run_compare

    given: dict[str, object] = {}

    class Stop(Exception):
        pass

    def record(*args: object, **kwargs: object) -> None:
        given.update(kwargs)
        raise Stop

    monkeypatch.setattr(train_module, "train_model", record)
    config = TrainConfig.tiny(item_init="als")
    with pytest.raises(Stop):
        run_compare("synthetic", seeds=1, config=config, with_peers=False, progress=None)
    co_engagement, plays = given["co_engagement"], given["plays"]
    assert co_engagement is not None and len(co_engagement.neighbours) > 0  # type: ignore[attr-defined]
    assert plays is not None and plays.user_items.nnz > 0  # type: ignore[attr-defined]
