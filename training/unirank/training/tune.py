"""``unirank tune``: search the training knobs on the validation split with Optuna, within a budget.

Someone else's logs need other settings than the ones chosen on MovieLens (a sparse listening
history overfits after one epoch at the default capacity). The tuner searches the task weights
w_t, the batch shares, the learning rate, the capacity, the regularisation and the stopping knobs;
every trial trains on the training split and is scored on the validation split only (the mean of
the trained use-cases' validation NDCG@10 at the epoch the run selects); a trial whose curve is
below the median of earlier trials at the same epoch is pruned. The test split is never read.

The result is a config file that ``unirank train``, ``compare`` and ``quality`` accept with
``--config FILE``: the tuned fields of the unified model and, optionally (``--single-task``), of
one model per use-case tuned with the same budget each, so a comparison stays fair.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unirank.artifact import TASKS
from unirank.training.config import ITEM_INITS, TrainConfig

if TYPE_CHECKING:
    from unirank.training.sources import DataSpec

Progress = Callable[[str], None]

CONFIG_FORMAT = "unirank-tuned-config"
CONFIG_VERSION = 1
HALF_LIVES: tuple[float, ...] = (7.0, 30.0, 120.0)
"""Recent-popularity half-lives (days) the search tries: a week, a month, a season."""
MF_FACTORS: tuple[int, ...] = (0, 16)
"""The MF score's widths the search tries: none, or the 16 factors ALS's validation grid picks."""
MIN_TRIAL_SECONDS = 30.0
"""A trial is not started when less than this is left of the budget."""


def load_config_file(path: Path) -> dict[str, Any]:
    """A tuned config file: ``{"unified": {field: value}, "single_task": {task: {field: value}}}``.

    Every field is checked against :class:`TrainConfig` now, so a bad file fails before any data
    is read.
    """
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--config {path}: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != CONFIG_FORMAT:
        raise ValueError(f"--config {path}: not a {CONFIG_FORMAT} file (write one with `unirank tune`)")
    if document.get("version") != CONFIG_VERSION:
        raise ValueError(f"--config {path}: version {document.get('version')!r}, this reads {CONFIG_VERSION}")
    unified = _fields(document.get("unified", {}), f"--config {path}: unified")
    single = document.get("single_task", {})
    if not isinstance(single, dict):
        raise ValueError(f"--config {path}: single_task must map task names to fields")
    names = {spec.name for spec in TASKS}
    unknown = sorted(set(single) - names)
    if unknown:
        raise ValueError(f"--config {path}: single_task names unknown tasks {unknown}")
    per_task = {
        task: _fields(values, f"--config {path}: single_task.{task}") for task, values in single.items()
    }
    TrainConfig(**unified)  # validated as a whole, too
    for values in per_task.values():
        TrainConfig(**{**unified, **values})
    return {**document, "unified": unified, "single_task": per_task}


def _fields(values: Any, where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be an object of TrainConfig fields")
    known = TrainConfig.__dataclass_fields__
    unknown = sorted(set(values) - set(known) - {"data", "size", "seed"})
    if unknown:
        raise ValueError(f"{where}: TrainConfig has no fields {unknown}")
    out = {k: v for k, v in values.items() if k not in ("data", "size", "seed")}
    if "split_fractions" in out:
        out["split_fractions"] = tuple(out["split_fractions"])
    return out


def tuned_on(spec: DataSpec, size: str) -> str:
    """What a search ran on, for a reader: the data's kind and its directory's name (or the
    synthetic preset), never a path, so the file reads the same from any checkout. Nothing loads
    data from it: ``--data`` on the command line always says what to train on."""
    if spec.kind == "synthetic":
        return f"synthetic --size {size}"
    return f"{spec.kind} ({Path(spec.path).name or spec.path})"


def suggest(trial: Any, base: TrainConfig, tasks: Sequence[str]) -> dict[str, Any]:
    """One trial's TrainConfig fields (the search space)."""
    values: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 3e-4, 5e-3, log=True),
        "dim": trial.suggest_categorical("dim", [16, 32, 64]),
        "hidden": trial.suggest_categorical("hidden", [64, 96, 160]),
        "dropout": trial.suggest_float("dropout", 0.0, 0.4),
        "weight_decay": trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True),
        "user_dropout": trial.suggest_float("user_dropout", 0.0, 0.4),
        "architecture": trial.suggest_categorical("architecture", ["shared_bottom", "mmoe"]),
        "patience": trial.suggest_int("patience", 1, 3),
        "task_patience": trial.suggest_int("task_patience", 1, 3),
        "retired_tasks": trial.suggest_categorical("retired_tasks", ["distil", "drop"]),
        "popular_negative_share": trial.suggest_float("popular_negative_share", 0.2, 0.8),
        "time_features": trial.suggest_categorical("time_features", [True, False]),
        "item_init": trial.suggest_categorical("item_init", list(ITEM_INITS)),
        "mf_factors": trial.suggest_categorical("mf_factors", list(MF_FACTORS)),
    }
    if values["time_features"]:
        values["recent_half_life_days"] = trial.suggest_categorical("recent_half_life_days", HALF_LIVES)
    if "new_releases" in tasks:
        values["release_pool_negatives"] = trial.suggest_categorical(
            "release_pool_negatives", [0, 16, 32, 48]
        )
    if len(tasks) > 1:
        values["task_weights"] = {
            **base.task_weights,
            **{t: trial.suggest_float(f"w_{t}", 0.3, 3.0, log=True) for t in tasks},
        }
        values["task_sampling"] = trial.suggest_categorical(
            "task_sampling", ["sqrt", "equal", "proportional"]
        )
    return values


def validation_score(history: Sequence[Any], best_epoch: int, tasks: Sequence[str]) -> float:
    """The unweighted mean validation NDCG@10 of ``tasks`` at the selected epoch (w_t varies by
    trial, so the selection's weighted mean would not compare trials)."""
    if not history:
        return 0.0
    log = history[max(best_epoch, 1) - 1]
    values = [log.validation_ndcg[t] for t in tasks if t in log.validation_ndcg]
    return float(np.mean(values)) if values else 0.0


def tune(
    data: str,
    base: TrainConfig,
    budget_minutes: float,
    single_task: bool = False,
    trials: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Search on ``data``'s validation split within ``budget_minutes`` per model tuned; returns the
    config file's content (see :func:`load_config_file`)."""
    try:
        import optuna
    except ImportError:
        raise RuntimeError("unirank tune needs optuna: pip install -e '.[quality]'") from None
    from unirank.training.coverage import plan_tasks
    from unirank.training.pipeline import prepare_data_for
    from unirank.training.sources import load_logs, parse_data_spec
    from unirank.training.train import torch_threads

    if budget_minutes <= 0:
        raise ValueError("--budget-minutes must be > 0")
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    spec = parse_data_spec(data)
    base = base.replace(data=str(spec))
    log = load_logs(spec, size=base.size, seed=0)
    prepared = prepare_data_for(log, base)
    base, coverage = plan_tasks(prepared.dataset.counts(), base, log, lambda line: say(f"[tune] {line}"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    targets: list[tuple[str, TrainConfig, tuple[str, ...]]] = [("unified", base, coverage.trained)]
    if single_task:
        targets += [(task, base.only(task), (task,)) for task in coverage.trained]
    out: dict[str, Any] = {
        "format": CONFIG_FORMAT,
        "version": CONFIG_VERSION,
        "tuned_on": tuned_on(spec, base.size),
        "selection": "mean validation NDCG@10 of the trained use-cases at the selected epoch; "
        "the test split is never read",
        "skipped_tasks": coverage.skipped,
        "budget_minutes": budget_minutes,
        "single_task": {},
        "trials": {},
        "validation": {},
    }
    with torch_threads(base.threads):
        for name, config, tasks in targets:
            best, study = _study(optuna, prepared, config, tasks, budget_minutes * 60.0, trials, name, say)
            if name == "unified":
                out["unified"] = best
            else:  # a single-task model's weights and shares are its own task's, whatever the file says
                out["single_task"][name] = {
                    k: v for k, v in best.items() if k not in ("task_weights", "task_ratios")
                }
            out["trials"][name] = {
                "complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials),
                "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
            }
            out["validation"][name] = study.best_value if out["trials"][name]["complete"] else None
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def _study(
    optuna: Any,
    prepared: Any,
    config: TrainConfig,
    tasks: Sequence[str],
    budget_s: float,
    trials: int | None,
    name: str,
    say: Progress,
) -> tuple[dict[str, Any], Any]:
    from unirank.training.item_init import plays_if_needed
    from unirank.training.train import train_model

    deadline = time.perf_counter() + budget_s
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    # The first trial is the config as given, so tuning never returns worse than the defaults
    # on validation.
    study.enqueue_trial(_as_params(config, tasks))

    def objective(trial: Any) -> float:
        values = suggest(trial, config, tasks)
        # Calibration comes after training whatever the knobs; trials skip it to spend the budget
        # on the knobs themselves.
        trial_config = config.replace(**values, calibrate_heads=False)

        def on_epoch(epoch_log: Any) -> None:
            values_now = [epoch_log.validation_ndcg[t] for t in tasks if t in epoch_log.validation_ndcg]
            trial.report(float(np.mean(values_now)) if values_now else 0.0, epoch_log.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
            if time.perf_counter() > deadline + budget_s * 0.25:
                raise optuna.TrialPruned()  # far over the budget: stop rather than overrun it

        plays = plays_if_needed(trial_config, prepared.log, prepared.split, prepared.catalog)
        result = train_model(
            prepared.dataset,
            prepared.catalog,
            trial_config,
            None,
            prepared.co_engagement,
            on_epoch=on_epoch,
            plays=plays,
        )
        score = validation_score(result.history, result.best_epoch, tasks)
        params = json.dumps(trial.params, sort_keys=True)
        say(f"[tune {name}] trial {trial.number}: validation {score:.4f} {params}")
        return score

    def budget_left(study: Any, trial: Any) -> None:
        del trial
        if deadline - time.perf_counter() < MIN_TRIAL_SECONDS:
            study.stop()

    study.optimize(objective, n_trials=trials, timeout=budget_s, callbacks=[budget_left], catch=())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        say(f"[tune {name}] no trial completed within the budget; keeping the given config")
        return {}, study
    best = config.replace(**suggest(_Fixed(study.best_params), config, tasks))
    say(f"[tune {name}] best validation {study.best_value:.4f} after {len(study.trials)} trials")
    return _diff(best, TrainConfig.preset(config.size)), study


class _Fixed:
    """Replays fixed parameters through :func:`suggest` (the best trial's, or the defaults)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        del low, high, log
        return float(self.params[name])

    def suggest_int(self, name: str, low: int, high: int) -> int:
        del low, high
        return int(self.params[name])

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        del choices
        return self.params[name]


def _as_params(config: TrainConfig, tasks: Sequence[str]) -> dict[str, Any]:
    """The search-space parameters that reproduce ``config`` (clipped into the space)."""
    params: dict[str, Any] = {
        "learning_rate": min(max(config.learning_rate, 3e-4), 5e-3),
        "dim": config.dim if config.dim in (16, 32, 64) else 32,
        "hidden": config.hidden if config.hidden in (64, 96, 160) else 96,
        "dropout": min(max(config.dropout, 0.0), 0.4),
        "weight_decay": min(max(config.weight_decay, 1e-7), 1e-3),
        "user_dropout": min(max(config.user_dropout, 0.0), 0.4),
        "architecture": config.architecture,
        "patience": min(max(config.patience, 1), 3),
        "task_patience": min(max(config.task_patience, 1), 3),
        "retired_tasks": config.retired_tasks,
        "time_features": config.time_features,
        "item_init": config.item_init,
        "mf_factors": config.mf_factors if config.mf_factors in MF_FACTORS else 16,
        "popular_negative_share": min(max(config.popular_negative_share, 0.2), 0.8),
    }
    if config.time_features:
        half_life = config.recent_half_life_days
        params["recent_half_life_days"] = half_life if half_life in HALF_LIVES else 30.0
    if "new_releases" in tasks:
        pool = config.release_pool_negatives
        params["release_pool_negatives"] = pool if pool in (0, 16, 32, 48) else 48
    if len(tasks) > 1:
        params.update({f"w_{t}": min(max(config.task_weight(t), 0.3), 3.0) for t in tasks})
        params["task_sampling"] = config.task_sampling
    return params


def _diff(config: TrainConfig, reference: TrainConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from ``reference`` (the config file's content)."""
    ours, theirs = config.to_dict(), reference.to_dict()
    skip = ("data", "size", "seed")
    return {k: _plain(v) for k, v in ours.items() if k not in skip and v != theirs.get(k)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value
