"""What ``unirank compare`` reports: the methods' names, the metrics, the per-task summary
(mean and standard deviation over seeds, the unified model's relative delta against each other
method), the issue's targets, and the plain-text table.

:mod:`unirank.training.compare` runs the comparison and hands its :class:`JobResult` list here;
:mod:`unirank.training.quality` draws the same result. Nothing here trains or reads data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unirank.artifact import TASKS, metrics
from unirank.training.evaluate import METRIC_ORDER

UNIFIED = "unified"
SINGLE_TASK = "single_task"
NO_TASK_TYPE = "no_task_type"
POPULARITY = "popularity"
PEERS = "peers"
TARGET_METRIC = f"ndcg@{metrics.K_DEFAULT}"
METRICS: tuple[str, ...] = (TARGET_METRIC, *(m for m in METRIC_ORDER if m != TARGET_METRIC))
"""The evaluation's metrics, the comparison's target first."""
PEER_TARGET_TASKS: tuple[str, ...] = tuple(spec.name for spec in TASKS)
"""Tasks on which the unified model is expected to match the best classic peer: every one."""


@dataclass
class JobResult:
    variant: str
    seed: int
    test: dict[str, dict[str, float]]
    """{task: {metric: value}} on the fixed test rows."""
    best_epoch: int
    epochs_run: int
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _mean_std(runs: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = [m for m in METRICS if all(m in r for r in runs)]
    values = {m: np.array([r[m] for r in runs], dtype=np.float64) for m in keys}
    return (
        {m: float(v.mean()) for m, v in values.items()},
        {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
    )


def _delta(unified: Mapping[str, float], other: Mapping[str, float]) -> dict[str, float | None]:
    return {m: (unified[m] - other[m]) / other[m] if other.get(m) else None for m in unified if m in other}


def summarise(
    runs: Sequence[JobResult],
    popularity: Mapping[str, Mapping[str, float]],
    peers: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
    ablations: Sequence[str] = (),
) -> dict[str, Any]:
    """The comparison's ``tasks`` (means), ``std``, ``delta`` (unified vs each) and ``targets``."""
    tasks: dict[str, Any] = {}
    std: dict[str, Any] = {}
    delta: dict[str, Any] = {}
    for spec in TASKS:
        task = spec.name
        by_method: dict[str, list[Mapping[str, float]]] = {}
        for run in runs:
            if task not in run.test:
                continue
            method = SINGLE_TASK if run.variant.startswith(f"{SINGLE_TASK}:") else run.variant
            by_method.setdefault(method, []).append(run.test[task])
        if UNIFIED not in by_method:
            continue
        tasks[task], std[task], delta[task] = {}, {}, {}
        for method in (UNIFIED, SINGLE_TASK, NO_TASK_TYPE, *ablations):
            if method in by_method:
                tasks[task][method], std[task][method] = _mean_std(by_method[method])
        if task in popularity:
            tasks[task][POPULARITY] = {m: float(v) for m, v in popularity[task].items() if m in METRICS}
            std[task][POPULARITY] = dict.fromkeys(tasks[task][POPULARITY], 0.0)
        tasks[task][PEERS], std[task][PEERS] = {}, {}
        for peer, peer_runs in peers.get(task, {}).items():
            tasks[task][PEERS][peer], std[task][PEERS][peer] = _mean_std(peer_runs)
        unified = tasks[task][UNIFIED]
        for method, values in tasks[task].items():
            if method == UNIFIED:
                continue
            if method == PEERS:
                delta[task][PEERS] = {peer: _delta(unified, v) for peer, v in values.items()}
            else:
                delta[task][method] = _delta(unified, values)
    return {"tasks": tasks, "std": std, "delta": delta, "targets": targets(tasks)}


def targets(tasks: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the numbers it compared and whether it passed."""
    out: dict[str, Any] = {}
    for task, by in tasks.items():
        unified = by[UNIFIED][TARGET_METRIC]
        if SINGLE_TASK in by:
            single = by[SINGLE_TASK][TARGET_METRIC]
            out[f"{task}: unified >= single_task"] = {
                "unified": unified,
                "other": single,
                "pass": unified >= single,
            }
        if POPULARITY in by:
            pop = by[POPULARITY][TARGET_METRIC]
            out[f"{task}: unified > popularity"] = {"unified": unified, "other": pop, "pass": unified > pop}
        if task in PEER_TARGET_TASKS and by.get(PEERS):
            name, best = max(by[PEERS].items(), key=lambda kv: kv[1][TARGET_METRIC])
            out[f"{task}: unified >= best peer ({name})"] = {
                "unified": unified,
                "other": best[TARGET_METRIC],
                "pass": unified >= best[TARGET_METRIC],
            }
    return out


def format_table(result: Mapping[str, Any]) -> str:
    """Plain text: per task and method, NDCG@10 / Recall@10 / MRR as mean ± std, and the delta."""
    lines = []
    header = f"{'task':<14} {'method':<26} {'ndcg@10':>17} {'recall@10':>17} {'mrr':>17} {'unified vs':>10}"
    lines += [header, "-" * len(header)]
    for task, by in result["tasks"].items():
        for method, values, spread, delta in _rows(result, task, by):
            cells = [
                f"{values.get(m, float('nan')):.4f} ± {spread.get(m, 0.0):.4f}"
                for m in (TARGET_METRIC, f"recall@{metrics.K_DEFAULT}", "mrr")
            ]
            change = "" if delta is None else f"{delta:+.1%}"
            lines.append(f"{task:<14} {method:<26} {cells[0]:>17} {cells[1]:>17} {cells[2]:>17} {change:>10}")
    lines.append("")
    for task, reason in result.get("skipped_tasks", {}).items():
        lines.append(f"SKIPPED  {task}: {reason}")
    for name, target in result.get("targets", {}).items():
        lines.append(
            f"{'PASS' if target['pass'] else 'MISS'}  {name}: "
            f"{target['unified']:.4f} vs {target['other']:.4f}"
        )
    return "\n".join(lines)


def _rows(
    result: Mapping[str, Any], task: str, by: Mapping[str, Any]
) -> list[tuple[str, Mapping[str, float], Mapping[str, float], float | None]]:
    rows = []
    std, delta = result["std"][task], result["delta"][task]
    for method, values in by.items():
        if method == PEERS:
            for peer, peer_values in values.items():
                change = delta.get(PEERS, {}).get(peer, {}).get(TARGET_METRIC)
                rows.append((f"peer:{peer}", peer_values, std[PEERS][peer], change))
        else:
            change = None if method == UNIFIED else delta.get(method, {}).get(TARGET_METRIC)
            rows.append((method, values, std[method], change))
    return rows
