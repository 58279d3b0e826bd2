"""Partial refit: fine-tune an artifact's model on new logs for a bounded number of steps.

``unirank train --warm-start PARENT --data SPEC --out DIR [--max-steps N] [--learning-rate LR]``
writes a new artifact version that starts from the parent's weights:

* The parent is loaded the way a server loads it: every checksum verified before any file is
  parsed, ``model.pt`` read with ``torch.load(weights_only=True)``.
* The parent's catalogue and vocabularies (items, users, query tokens, categories) and its encoder
  settings are kept, so the ONNX inputs of the new version mean exactly what the parent's meant.
  The new logs are mapped onto them: an interaction with an item (or a related click on an anchor,
  a category click in a category) the parent does not know is dropped and counted, and so is a
  text about an unknown item; items the new logs add are counted too (a full training picks them
  up). Users the parent never saw are kept: the model reads a row's history, and an unknown user
  id is input 0, the anonymous user the model is trained to rank for (``user_dropout``).
* Item popularity and co-engagement are statistics of the logs, not of the encoding: they are
  recomputed from the new logs' training split (the model's buffers and the retrieval data).
* The architecture and model sizes are the parent's; the training procedure (learning rate, the
  step bound, seed, task weights, negatives) may change. The learning rate defaults to
  ``WARM_START_LR_SCALE`` times the parent's, and training stops after ``max_steps`` optimizer
  steps at most, validating every ``min(parent's steps per epoch, max_steps)`` steps, with the
  parent's early stopping. The optimizer state starts fresh (artifacts do not ship it).
* Evaluation and metrics are those of a normal training; the parent is evaluated on the same test
  rows, and the manifest records ``warm_started_from`` (the parent's model version) and a
  ``warm_start`` entry (parent path and manifest checksum, steps, learning rate, the mapping
  counts and the parent's test metrics).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unirank.artifact import TASKS, Artifact, ArtifactError, Catalog, load_artifact
from unirank.artifact.store import MANIFEST, sha256_file
from unirank.model.net import UniRankModel, build_model_from_checkpoint
from unirank.training.baselines import CoEngagement
from unirank.training.config import WARM_START_LR_SCALE, WARM_START_MAX_STEPS, TrainConfig
from unirank.training.coverage import plan_tasks
from unirank.training.dataset import catalog_from_logs, map_onto_catalog
from unirank.training.distributed import Distributed
from unirank.training.evaluate import MODEL, ModelScorer, evaluate_scorers
from unirank.training.examples import UserSplit
from unirank.training.pipeline import (
    check_out_dir,
    describe_counts,
    prepare_data_for,
    write_version,
)
from unirank.training.sources import load_logs, parse_data_spec
from unirank.training.train import Progress, build_model, print_progress, torch_threads, train_model

FIXED_BY_PARENT: tuple[str, ...] = (
    "max_history",
    "max_query_tokens",
    "dim",
    "hidden",
    "dropout",
    "architecture",
    "n_experts",
    "use_task_type",
    "time_features",
    "recent_half_life_days",
    "impute_context",
    "mf_factors",
    "co_engagement_neighbours",
)
"""TrainConfig fields that shape the model or its inputs: a refit keeps the parent's."""


@dataclass
class Parent:
    """A verified parent artifact, its model and the config it was trained with."""

    artifact: Artifact
    model: UniRankModel
    config: TrainConfig

    @property
    def version(self) -> str:
        return self.artifact.model_version


def load_parent(path: str | Path) -> Parent:
    """Verify every checksum, then load the weights (``weights_only=True``) and the training config."""
    artifact = load_artifact(path)  # raises ArtifactError on any mismatch, before parsing model.pt
    try:
        checkpoint = torch.load(artifact.torch_path, map_location="cpu", weights_only=True)
        model = build_model_from_checkpoint(checkpoint)
    except Exception as exc:  # a verified checkpoint that still does not load is a broken artifact
        raise ArtifactError(f"{artifact.path}: cannot load the model weights: {exc}") from exc
    if model.config.n_tasks != len(TASKS):
        raise ArtifactError(
            f"{artifact.path}: the model has {model.config.n_tasks} task heads and this version knows "
            f"{len(TASKS)} tasks; a warm start cannot add a head, train from scratch"
        )
    recorded = artifact.manifest.get("training", {}).get("config")
    if not isinstance(recorded, dict):
        raise ArtifactError(f"{artifact.path}: the manifest records no training config to continue from")
    fields = TrainConfig.__dataclass_fields__
    values = {name: value for name, value in recorded.items() if name in fields}
    if "split_fractions" in values:
        values["split_fractions"] = tuple(values["split_fractions"])
    # A parent from before the time features has none: its refits keep its inputs.
    values["time_features"] = model.config.time_features
    values["recent_half_life_days"] = model.config.recent_half_life_days
    try:
        config = TrainConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{artifact.path}: unusable training config in the manifest: {exc}") from exc
    return Parent(artifact, model, config)


def refit_config(parent: Parent, overrides: dict[str, Any]) -> TrainConfig:
    """The parent's config with the refit's overrides; shape fields must stay the parent's."""
    changed = sorted(
        name
        for name in FIXED_BY_PARENT
        if name in overrides and overrides[name] != getattr(parent.config, name)
    )
    if changed:
        raise ValueError(
            f"a warm start keeps the parent's {', '.join(changed)} (the model's shape and inputs); "
            "train from scratch to change them"
        )
    max_steps = overrides.get("max_steps") or WARM_START_MAX_STEPS
    learning_rate = overrides.get("learning_rate") or parent.config.learning_rate * WARM_START_LR_SCALE
    # Where the parent trained says nothing about where the refit runs: the CPU unless told.
    settings = {"device": "cpu", **overrides, "max_steps": max_steps, "learning_rate": learning_rate}
    return parent.config.replace(**settings)


def warm_start_model(
    parent: Parent, catalog: Catalog, config: TrainConfig, co_engagement: CoEngagement | None
) -> UniRankModel:
    """A model for the refreshed ``catalog`` (new popularity and co-engagement buffers) holding the
    parent's trained parameters; refuses a parent whose shape this config cannot rebuild."""
    model = build_model(catalog, config, co_engagement)
    if model.config.to_dict() != parent.model.config.to_dict():
        raise ArtifactError(
            f"the parent's model config {parent.model.config.to_dict()} cannot be rebuilt from its "
            f"catalogue and training config (got {model.config.to_dict()})"
        )
    state = parent.model.state_dict()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name not in state or state[name].shape != parameter.shape:
                raise ArtifactError(f"the parent's weights lack {name} {tuple(parameter.shape)}")
            parameter.copy_(state[name])
        if model.item_factors is not None and parent.model.item_factors is not None:
            model.item_factors.copy_(parent.model.item_factors)  # the MF score's table: the parent's
    return model


def refit_artifact(
    parent_path: str | Path,
    overrides: dict[str, Any],
    out_dir: Path,
    progress: Progress | None = print_progress,
    distributed: Distributed | None = None,
) -> Path:
    """Fine-tune the parent at ``parent_path`` on ``overrides["data"]`` and write a new version."""
    parent = load_parent(parent_path)
    config = refit_config(parent, overrides)
    with torch_threads(config.threads):
        return _refit(parent, config, Path(out_dir), progress, distributed)


def _refit(
    parent: Parent,
    config: TrainConfig,
    out_dir: Path,
    progress: Progress | None,
    distributed: Distributed | None,
) -> Path:
    say = progress or (lambda _message: None)
    if out_dir.resolve() == parent.artifact.path.resolve():
        raise ValueError(f"--out {out_dir} is the parent itself; a refit writes a new version")
    check_out_dir(out_dir)
    started = time.perf_counter()
    spec = parse_data_spec(config.data)
    say(f"warm start from {parent.version} ({parent.artifact.path})")
    log = load_logs(spec, size=config.size, seed=config.seed)
    mapped, mapping = map_onto_catalog(log, parent.artifact.catalog)
    say(mapping.format())
    if mapping.kept == 0:
        raise ValueError(f"--data {spec}: no interaction is about an item the parent knows")
    split = UserSplit.from_logs(mapped, config.split_fractions)
    # Popularity is a statistic of the new logs; the vocabularies and item content stay the parent's.
    catalog = dataclasses.replace(
        parent.artifact.catalog, popularity=catalog_from_logs(mapped, split).popularity
    )
    data = prepare_data_for(mapped, config, catalog)
    config, _ = plan_tasks(data.dataset.counts(), config, mapped, say)
    n_train = len(data.dataset.rows("train"))
    assert config.max_steps is not None
    per_epoch = min(
        config.steps_per_epoch or max(1, math.ceil(n_train / config.batch_size)), config.max_steps
    )
    config = config.replace(steps_per_epoch=per_epoch, epochs=math.ceil(config.max_steps / per_epoch))
    say(
        f"data {spec}: {mapped.n_items} items, {mapped.n_users} users, {len(mapped.events)} events; "
        f"train/validation/test rows: {describe_counts(data.dataset)}; at most {config.max_steps} steps "
        f"at learning rate {config.learning_rate:g} (parent {parent.config.learning_rate:g})"
    )
    model = warm_start_model(parent, data.catalog, config, data.co_engagement)
    result = train_model(
        data.dataset,
        data.catalog,
        config,
        progress,
        data.co_engagement,
        initial=model,
        distributed=distributed,
    )
    if distributed is not None and not distributed.primary:
        return out_dir
    parent_metrics = evaluate_scorers(
        {MODEL: ModelScorer(parent.model)},
        data.dataset,
        "test",
        data.catalog,
        config.eval_rows_per_task,
        config.seed,
    )
    warm_start = {
        "parent_version": parent.version,
        "parent_path": str(parent.artifact.path.resolve()),
        "parent_manifest_sha256": sha256_file(parent.artifact.path / MANIFEST),
        "max_steps": config.max_steps,
        "steps": result.steps,
        "learning_rate": config.learning_rate,
        "parent_learning_rate": parent.config.learning_rate,
        "refreshed": ["popularity", "co_engagement"],
        "parent_test_metrics": {task: by_scorer[MODEL] for task, by_scorer in parent_metrics.items()},
    }
    manifest = write_version(
        out_dir,
        data,
        config,
        result,
        str(spec),
        started,
        say,
        distributed,
        training_data={"mapped_onto_parent": mapping.to_dict()},
        extra={"warm_started_from": parent.version, "warm_start": warm_start},
    )
    metrics = json.loads((out_dir / "metrics.json").read_text())["tasks"]
    say(
        "test ndcg@10 parent -> refit: "
        + " ".join(
            f"{task}={parent_metrics[task][MODEL].get('ndcg@10', float('nan')):.3f}->"
            f"{metrics[task][MODEL].get('ndcg@10', float('nan')):.3f}"
            for task in metrics
            if task in parent_metrics
        )
    )
    say(
        f"wrote artifact {manifest['model_version']} (warm-started from {parent.version}, "
        f"{result.steps} steps) to {out_dir} in {time.perf_counter() - started:.1f}s"
    )
    return out_dir
