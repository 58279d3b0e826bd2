"""Which use-cases a data set can train and evaluate: decided once, before any model trains.

Real logs lack things: a music catalogue has no release years (no new-releases labels), an export
may hold no search text. A use-case without enough labels in any split is *skipped* with a reason:
it is not trained, selected on, evaluated or compared, the artifact records that it has no trained
head (the server answers it ``FAILED_PRECONDITION``, like a use-case an old artifact predates),
and every other use-case runs. ``train``, ``evaluate``, ``compare`` and ``quality`` all say which
ones were skipped and why, before the first step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from unirank.artifact import TASKS
from unirank.training.config import TrainConfig
from unirank.training.logs import LogData

SPLIT_NAMES: tuple[str, str, str] = ("train", "validation", "test")


def _missing_inputs(log: LogData) -> dict[str, str]:
    """Why a use-case cannot have labels in these logs at all (the data lacks what it needs)."""
    reasons: dict[str, str] = {}
    if not np.any(np.asarray(log.items.release_year) > 0):
        reasons["new_releases"] = "no item has a release year, so no item is ever a new release"
    if not any(log.items.categories):
        reasons["category"] = "no item has a category"
    return reasons


@dataclass(frozen=True)
class TaskCoverage:
    """The use-cases to train, and the ones skipped with the reason for each."""

    trained: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)

    def apply(self, config: TrainConfig) -> TrainConfig:
        """``config`` with every skipped task's weight (and batch share) set to 0."""
        if not self.skipped:
            return config
        weights = {**config.task_weights, **dict.fromkeys(self.skipped, 0.0)}
        ratios = None
        if config.task_ratios is not None:
            ratios = {**config.task_ratios, **dict.fromkeys(self.skipped, 0.0)}
        return config.replace(task_weights=weights, task_ratios=ratios)

    def lines(self) -> list[str]:
        """One line per skipped use-case, for progress output."""
        return [f"skipped {task}: {reason}" for task, reason in self.skipped.items()]

    def to_dict(self) -> dict[str, object]:
        return {"trained": list(self.trained), "skipped": dict(self.skipped)}


def task_coverage(
    counts: Mapping[str, Mapping[str, int]], config: TrainConfig, log: LogData | None = None
) -> TaskCoverage:
    """Decide from the rows per task and split (``Dataset.counts()``) which use-cases can run.

    A use-case is skipped when it has fewer than ``config.min_train_rows`` training rows, fewer
    than ``config.min_eval_rows`` validation or test rows (too few to select or to measure on), or
    when ``task_weights`` gives it 0 (the data's reason comes first, so deciding again on the
    config :meth:`TaskCoverage.apply` returned gives the same reasons). Raises ValueError, naming
    every reason, when nothing is left to train, or when explicit ``task_ratios`` give every
    trainable task a 0 share.
    """
    missing = _missing_inputs(log) if log is not None else {}
    trained: list[str] = []
    skipped: dict[str, str] = {}
    for spec in TASKS:
        task = spec.name
        rows = counts.get(task, {})
        n_train, n_validation, n_test = (int(rows.get(split, 0)) for split in SPLIT_NAMES)
        if n_train + n_validation + n_test == 0:
            skipped[task] = "no labels in the data" + (f": {missing[task]}" if task in missing else "")
        elif n_train < config.min_train_rows:
            skipped[task] = f"{n_train} training rows, fewer than min_train_rows={config.min_train_rows}"
        elif min(n_validation, n_test) < config.min_eval_rows:
            skipped[task] = (
                f"{n_validation} validation and {n_test} test rows, fewer than "
                f"min_eval_rows={config.min_eval_rows} to select and measure on"
            )
        elif config.task_weight(task) <= 0:
            skipped[task] = "task_weights gives it weight 0"
        else:
            trained.append(task)
    if not trained:
        raise ValueError(
            "no use-case has enough labels to train: "
            + "; ".join(f"{task}: {reason}" for task, reason in skipped.items())
        )
    if config.task_ratios is not None and not any(config.task_ratios.get(t, 0.0) > 0 for t in trained):
        raise ValueError(
            f"task_ratios {config.task_ratios} gives no batch share to a use-case that can train "
            f"({', '.join(trained)})"
        )
    return TaskCoverage(tuple(trained), skipped)


def plan_tasks(
    counts: Mapping[str, Mapping[str, int]],
    config: TrainConfig,
    log: LogData | None,
    say: Callable[[str], None],
) -> tuple[TrainConfig, TaskCoverage]:
    """:func:`task_coverage`, reported through ``say``, and the config that trains what it can."""
    coverage = task_coverage(counts, config, log)
    for line in coverage.lines():
        say(line)
    return coverage.apply(config), coverage
