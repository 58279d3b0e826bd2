"""Data-parallel training under torchrun matches single-process training.

Two CPU processes (gloo) each score every second row of the same seeded batches, DDP averages
the gradients and the loss is split so that the shares add up to the single-process loss: one
step is the single-process step up to floating-point summation order. With dropout off (its masks
are drawn per process, so with dropout on the runs are only statistically alike), the weights
after 62 steps (2 epochs) agree to WEIGHT_TOLERANCE and the per-task test metrics to
METRIC_TOLERANCE. Measured on this configuration: weights differ by at most 3.5e-5, the metrics
are equal. The metric tolerance is one ranking flip among the 200 evaluation rows of a task
(recall@10 moves by 1/200); the weight tolerance leaves a 30x margin over what was measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from unirank.artifact import TASKS, load_artifact
from unirank.artifact.store import MODEL_TORCH
from unirank.training.config import TrainConfig
from unirank.training.distributed import backend_for, launched_by_torchrun
from unirank.training.pipeline import train_artifact

WEIGHT_TOLERANCE = 1e-3
METRIC_TOLERANCE = 0.005
# Every path that differs per process: sampled, pool and in-batch negatives, learned task weights.
SETTINGS = {
    "dropout": 0.0,
    "epochs": 2,
    "task_weighting": "uncertainty",
    "in_batch_negatives": True,
    "pool_negatives": 8,
    "eval_rows_per_task": 200,
    # Head calibration compares validation NDCG step by step: a last-digit difference between the
    # two runs' weights could flip a step, which is not what this test is about.
    "calibrate_heads": False,
}
REPO = Path(__file__).resolve().parents[2]


def _flags() -> list[str]:
    flags = []
    for name, value in SETTINGS.items():
        flags += ["--set", f"{name}={json.dumps(value)}"]
    return flags


def test_two_processes_match_one(tmp_path: Path) -> None:
    single = train_artifact(TrainConfig.tiny(seed=0, **SETTINGS), tmp_path / "single", progress=None)
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "unirank.training",
            "train",
            "--data",
            "synthetic",
            "--size",
            "tiny",
            "--out",
            str(out),
            "--quiet",
            *_flags(),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Only rank 0 wrote (and printed); the other process left nothing behind.
    assert run.stdout.count("artifact ") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]

    ddp, one = load_artifact(out), load_artifact(single)
    training = ddp.manifest["training"]
    # Each process scored half of every batch of the single-process size.
    assert training["distributed"] == {"world_size": 2, "backend": "gloo", "rows_per_process": 128}
    assert training["steps"] == one.manifest["training"]["steps"]
    assert training["config"]["batch_size"] == one.manifest["training"]["config"]["batch_size"]

    weights = torch.load(out / MODEL_TORCH, weights_only=True)["state_dict"]
    reference = torch.load(single / MODEL_TORCH, weights_only=True)["state_dict"]
    worst = max(
        float((weights[name].double() - reference[name].double()).abs().max())
        for name in reference
        if reference[name].is_floating_point()
    )
    assert worst <= WEIGHT_TOLERANCE

    for spec in TASKS:
        got, expected = ddp.metrics["tasks"][spec.name]["model"], one.metrics["tasks"][spec.name]["model"]
        assert got.keys() == expected.keys()
        for metric, value in expected.items():
            assert abs(got[metric] - value) <= METRIC_TOLERANCE, (spec.name, metric, got[metric], value)


def test_backend_follows_the_device() -> None:
    assert backend_for("cpu") == "gloo"
    assert backend_for("cuda") == backend_for("cuda:1") == "nccl"


def test_a_single_process_is_not_distributed() -> None:
    assert not launched_by_torchrun({})
    assert not launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "1"})  # torchrun with one process
    assert launched_by_torchrun({"RANK": "1", "WORLD_SIZE": "2"})


def test_a_training_step_allocates_nothing_on_the_cpu(artifact_dir: Path) -> None:
    """The CUDA path (NCCL, ``--device cuda``) cannot run here; the meta device stands in for it:
    any tensor the model or the loss creates on the CPU mid-step makes this fail."""
    from unirank.artifact.activity import N_TIME_FEATURES
    from unirank.model.net import build_model_from_checkpoint
    from unirank.training.export import random_inputs
    from unirank.training.loss import multitask_loss

    model = build_model_from_checkpoint(torch.load(artifact_dir / MODEL_TORCH, weights_only=True))
    inputs = {
        name: torch.from_numpy(value).to("meta")
        for name, value in random_inputs(model, batch=4, history=3, query=2, candidates=6, seed=0)
        .as_dict()
        .items()
    }
    model.to("meta").train()
    scores = model(**inputs, item_table=model.item_table())
    weights = torch.ones(len(TASKS) + 1, device="meta")
    log_variance = torch.zeros(len(TASKS) + 1, device="meta")
    counts = torch.ones(len(TASKS) + 1, device="meta")  # as under DDP: the whole batch's rows per task
    loss, _, _ = multitask_loss(scores, inputs["task"], weights, log_variance, counts, shards=2)
    loss.backward()
    assert scores.shape == (4, 6) and loss.device.type == "meta"
    item_time = None
    if model.config.time_features:
        item_time = torch.zeros(4, model.config.n_items - 1, N_TIME_FEATURES, device="meta")
    full = model.score_all_items(
        *(inputs[name] for name in ("task", "user", "history", "query_tokens")),
        inputs["anchor_item"],
        inputs["category"],
        item_time=item_time,
    )
    assert full.shape == (4, model.config.n_items - 1)
