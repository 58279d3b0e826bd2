"""The offline pipeline end to end: data -> labels -> dataset -> train -> evaluate -> artifact."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unirank.artifact import TASKS, Catalog, FeatureEncoder, load_artifact
from unirank.artifact.activity import ItemActivity
from unirank.artifact.ann import build_item_index
from unirank.artifact.store import MANIFEST
from unirank.model.net import build_model_from_checkpoint
from unirank.training.baselines import CoEngagement
from unirank.training.config import TrainConfig
from unirank.training.coverage import plan_tasks, task_coverage
from unirank.training.dataset import Dataset, catalog_from_logs, encode_examples, map_onto_catalog
from unirank.training.distributed import Distributed
from unirank.training.evaluate import offline_metrics
from unirank.training.examples import TRAIN, UserSplit, events_split
from unirank.training.export import write_artifact
from unirank.training.item_init import plays_if_needed
from unirank.training.label_rows import LabelConfig
from unirank.training.labels import make_examples
from unirank.training.logs import LogData
from unirank.training.plots import TASK_METRICS, TRAINING_CURVES, plot_task_metrics, plot_training_curves
from unirank.training.retrieval import build_retrieval, item_embeddings, user_histories
from unirank.training.sources import load_logs, parse_data_spec
from unirank.training.train import Progress, TrainResult, print_progress, torch_threads, train_model

__all__ = [
    "PreparedData",
    "TrainConfig",
    "evaluate_artifact",
    "prepare_data",
    "train_artifact",
    "write_version",
]


@dataclass
class PreparedData:
    """Everything derived from the logs before training: catalogue, encoder, dataset, co-engagement."""

    log: LogData
    split: UserSplit
    catalog: Catalog
    encoder: FeatureEncoder
    dataset: Dataset
    co_engagement: CoEngagement


def prepare_data(
    log: LogData,
    max_history: int,
    max_query_tokens: int,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    catalog: Catalog | None = None,
    labels: LabelConfig | None = None,
    co_engagement_window: int = 10,
) -> PreparedData:
    """Split ``log`` per user, label and encode it; pass an artifact's ``catalog`` to reproduce it.

    The split is a deterministic function of the logs and ``split_fractions``, so re-reading the
    same data reproduces it exactly.
    """
    split = UserSplit.from_logs(log, split_fractions)
    catalog = catalog or catalog_from_logs(log, split)
    encoder = FeatureEncoder(catalog, max_history=max_history, max_query_tokens=max_query_tokens)
    dataset = encode_examples(make_examples(log, max_history, split, config=labels), encoder, log)
    train = events_split(log, split) == TRAIN
    co_engagement = CoEngagement.from_logs(
        log, train, np.asarray(catalog.popularity), window=co_engagement_window
    )
    return PreparedData(log, split, catalog, encoder, dataset, co_engagement)


def prepare_data_for(log: LogData, config: TrainConfig, catalog: Catalog | None = None) -> PreparedData:
    """:func:`prepare_data` with a training config's history, query, split and co-engagement
    knobs: how ``train``, ``compare``, ``tune`` and a warm start read their logs."""
    return prepare_data(
        log,
        config.max_history,
        config.max_query_tokens,
        config.split_fractions,
        catalog=catalog,
        co_engagement_window=config.co_engagement_window,
    )


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a directory that is neither empty nor an artifact (e.g. ``--out .``)."""
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file())
    ):
        raise FileExistsError(f"{out_dir} exists and is not an artifact directory; refusing to replace it")


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Move the finished artifact to ``out_dir`` so readers never see a half-written one."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{time.time_ns()}")
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out_dir)


def train_artifact(
    config: TrainConfig,
    out_dir: Path,
    progress: Progress | None = print_progress,
    distributed: Distributed | None = None,
) -> Path:
    """Generate or load the data, train, evaluate and write one verified artifact to ``out_dir``.

    ``out_dir`` may be missing, empty, or a previous artifact (replaced atomically). Returns it.
    Under ``distributed`` (torchrun) every process trains its share of each batch; only the primary
    process evaluates and writes ``out_dir``, the others return it without writing anything.
    """
    with torch_threads(config.threads):
        return _train_artifact(config, Path(out_dir), progress, distributed)


def _train_artifact(
    config: TrainConfig, out_dir: Path, progress: Progress | None, distributed: Distributed | None
) -> Path:
    say = progress or (lambda _message: None)
    check_out_dir(out_dir)
    started = time.perf_counter()
    spec = parse_data_spec(config.data)
    log = load_logs(spec, size=config.size, seed=config.seed, items=config.synthetic_items)
    data = prepare_data_for(log, config)
    say(
        f"data {spec} size={config.size} seed={config.seed}: {log.n_items} items, {log.n_users} users, "
        f"{len(log.events)} events ({time.perf_counter() - started:.1f}s); train/validation/test rows: "
        + describe_counts(data.dataset)
    )
    config, _ = plan_tasks(data.dataset.counts(), config, log, say)
    plays = plays_if_needed(config, data.log, data.split, data.catalog)
    result = train_model(
        data.dataset, data.catalog, config, progress, data.co_engagement, distributed=distributed, plays=plays
    )
    if distributed is not None and not distributed.primary:
        return out_dir
    manifest = write_version(out_dir, data, config, result, str(spec), started, say, distributed)
    say(f"wrote artifact {manifest['model_version']} to {out_dir} in {time.perf_counter() - started:.1f}s")
    say(f"plots: {out_dir / TRAINING_CURVES} and {out_dir / TASK_METRICS}")
    return out_dir


def describe_counts(dataset: Dataset) -> str:
    """``task train/validation/test`` rows, for progress lines."""
    return ", ".join(
        f"{task} {'/'.join(str(n) for n in by_split.values())}" for task, by_split in dataset.counts().items()
    )


def write_version(
    out_dir: Path,
    data: PreparedData,
    config: TrainConfig,
    result: TrainResult,
    spec: str,
    started: float,
    say: Progress,
    distributed: Distributed | None = None,
    training_data: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the trained model, build retrieval and write the artifact to ``out_dir`` atomically.

    ``spec`` is the data spec the logs came from; ``training_data`` adds to the manifest's summary
    of them, ``extra`` adds top-level manifest entries. Returns the manifest.
    """
    log = data.log
    training_data = {
        "source": log.source,
        "data": spec,
        "size": config.size,
        **({} if config.synthetic_items is None else {"synthetic_items": config.synthetic_items}),
        "seed": config.seed,
        "n_items": log.n_items,
        "n_users": log.n_users,
        "events": log.summary()["events"],
        "split": {"kind": "per_user_time", "fractions": list(config.split_fractions)},
        "counts": data.dataset.counts(),
        **(training_data or {}),
    }
    model = result.model
    phase = time.perf_counter()
    coverage = task_coverage(data.dataset.counts(), config, log)
    metrics = offline_metrics(
        model,
        data.catalog,
        data.co_engagement,
        data.dataset,
        config.eval_rows_per_task,
        config.validation_rows_per_task,
        config.seed,
        tasks=coverage.trained,
    )
    metrics["skipped_tasks"] = coverage.skipped
    histories = user_histories(data.log, data.split, data.catalog, config.max_history)
    item_index = build_item_index(item_embeddings(model))
    retrieval = build_retrieval(model, data.catalog, data.co_engagement, histories, item_index)
    say(f"evaluated and built retrieval in {time.perf_counter() - phase:.1f}s")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be read by servers
    try:
        plot_training_curves(result.history, staging / TRAINING_CURVES, result.best_epoch)
        plot_task_metrics(metrics["tasks"], staging / TASK_METRICS)
        training = {
            "config": config.to_dict(),
            "best_epoch": result.best_epoch,
            "calibration": result.calibration,
            "epochs_run": len(result.history),
            "steps": result.steps,
            "seconds": round(time.perf_counter() - started, 2),
            "torch_version": torch.__version__,
        }
        if distributed is not None:
            training["distributed"] = {
                "world_size": distributed.world_size,
                "backend": distributed.backend,
                "rows_per_process": len(distributed.rows(config.batch_size)),
            }
        manifest = write_artifact(
            staging,
            model,
            data.catalog,
            retrieval,
            metrics,
            encoder_config={"max_history": config.max_history, "max_query_tokens": config.max_query_tokens},
            training_data=training_data,
            extra={
                **(extra or {}),
                "training": training,
                "trained_tasks": list(coverage.trained),
                "skipped_tasks": coverage.skipped,
            },
            extra_files=(TRAINING_CURVES, TASK_METRICS),
            item_index=item_index,
            activity=item_activity(data.dataset, config),
        )
        load_artifact(staging)  # the reader's own check, before anyone can see the directory
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def item_activity(dataset: Dataset, config: TrainConfig) -> ItemActivity | None:
    """The items' activity after every event of the logs: where a server's recent popularity
    starts (None for a model without time features)."""
    if not config.time_features or dataset.events is None:
        return None
    return dataset.events.history(config.recent_half_life_days).final_state()


def evaluate_artifact(
    path: Path, data: str | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Recompute an artifact's offline metrics on its training data, regenerated from the manifest."""
    with torch_threads(TrainConfig().threads):
        return _evaluate_artifact(Path(path), data, progress)


def _evaluate_artifact(path: Path, data: str | None, progress: Progress | None) -> dict[str, Any]:
    say = progress or (lambda _message: None)
    artifact = load_artifact(path)
    recorded = artifact.manifest["training_data"]
    spec = parse_data_spec(data or recorded["data"])
    trained_on = parse_data_spec(recorded["data"])
    if spec.kind != trained_on.kind:
        raise ValueError(f"{path} was trained on --data {recorded['data']}, not {spec}")
    log = load_logs(
        spec, size=recorded["size"], seed=int(recorded["seed"]), items=recorded.get("synthetic_items")
    )
    if "warm_started_from" in artifact.manifest:  # a refit: its logs were mapped onto the parent's catalogue
        log, _ = map_onto_catalog(log, artifact.catalog)
    if log.items.item_ids != artifact.catalog.items.keys[1:]:
        raise ValueError(
            f"the {spec} catalogue differs from the artifact's: not the data it was trained on "
            "(or the generator or loader changed)"
        )
    split = recorded["split"]
    if split.get("kind") != "per_user_time":
        raise ValueError(f"{path} records a split this version cannot reproduce: {split}")
    encoder = artifact.encoder()
    config = artifact.manifest.get("training", {}).get("config", {})
    defaults = TrainConfig()
    prepared = prepare_data(
        log,
        encoder.max_history,
        encoder.max_query_tokens,
        split_fractions=tuple(split["fractions"]),  # type: ignore[arg-type]
        catalog=artifact.catalog,
        co_engagement_window=int(config.get("co_engagement_window", defaults.co_engagement_window)),
    )
    say(f"evaluating {artifact.model_version} on {spec} size={recorded['size']} seed={recorded['seed']}")
    skipped = dict(artifact.manifest.get("skipped_tasks", {}))
    trained = artifact.manifest.get("trained_tasks", [spec.name for spec in TASKS])
    for task, reason in skipped.items():
        say(f"skipped {task}: {reason} (no trained head in {artifact.model_version})")
    model = build_model_from_checkpoint(torch.load(artifact.torch_path, weights_only=True))
    metrics = offline_metrics(
        model,
        artifact.catalog,
        prepared.co_engagement,
        prepared.dataset,
        int(config.get("eval_rows_per_task", defaults.eval_rows_per_task)),
        int(config.get("validation_rows_per_task", defaults.validation_rows_per_task)),
        int(recorded["seed"]),
        tasks=trained,
    )
    metrics["skipped_tasks"] = skipped
    return metrics
