"""Training curves and per-task metric charts as PNG files (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

# The object-oriented API renders with Agg and touches no global pyplot state or backend, so
# importing this module never changes plotting for anyone else in the process.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from unirank.training.train import EpochLog

TRAINING_CURVES = "training_curves.png"
TASK_METRICS = "task_metrics.png"


def plot_training_curves(history: Sequence[EpochLog], path: Path, best_epoch: int = 0) -> None:
    """Per-task training loss and validation NDCG@10 by epoch."""
    training_curves_figure(history, best_epoch).savefig(path, dpi=90)


def training_curves_figure(history: Sequence[EpochLog], best_epoch: int = 0) -> Figure:
    # Constrained layout with the legend outside the panels, so it never covers a line.
    fig = Figure(figsize=(12, 4), layout="constrained")
    loss_ax, ndcg_ax = fig.subplots(1, 2)
    epochs = [log.epoch for log in history]
    tasks = list(dict.fromkeys(t for log in history for t in (*log.train_loss, *log.validation_ndcg)))
    for task in tasks:
        loss_ax.plot(
            epochs, [log.train_loss.get(task, float("nan")) for log in history], marker="o", label=task
        )
        ndcg_ax.plot(
            epochs, [log.validation_ndcg.get(task, float("nan")) for log in history], marker="o", label=task
        )
    ndcg_ax.plot(epochs, [log.selection_score for log in history], "k--", label="weighted mean")
    if best_epoch:
        for ax in (loss_ax, ndcg_ax):
            ax.axvline(best_epoch, color="grey", linestyle=":", label="kept")
    loss_ax.set(title="training loss L_t (sampled softmax)", xlabel="epoch", ylabel="loss")
    ndcg_ax.set(title="validation NDCG@10 (full catalogue)", xlabel="epoch", ylabel="NDCG@10")
    for ax in (loss_ax, ndcg_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
    handles, labels = ndcg_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return fig


def plot_task_metrics(tasks: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> None:
    """One panel per metric: model vs the baselines, grouped by task."""
    task_metrics_figure(tasks).savefig(path, dpi=90)


def task_metrics_figure(tasks: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Figure:
    scorers = list(dict.fromkeys(s for by_scorer in tasks.values() for s in by_scorer))
    metric_names = list(
        dict.fromkeys(m for by_scorer in tasks.values() for v in by_scorer.values() for m in v)
    )
    n_panels = max(len(metric_names), 1)
    fig = Figure(figsize=(4 * n_panels, 4.5), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)
    width = 0.8 / max(len(scorers), 1)
    task_names = list(tasks)
    for ax, metric in zip(axes[0], metric_names, strict=False):
        for i, scorer in enumerate(scorers):
            values = [tasks[t].get(scorer, {}).get(metric, 0.0) for t in task_names]
            ax.bar([x + i * width for x in range(len(task_names))], values, width, label=scorer)
        ax.set_xticks([x + width * (len(scorers) - 1) / 2 for x in range(len(task_names))])
        ax.set_xticklabels(task_names, rotation=20, fontsize=8)
        ax.set_title(f"test {metric}")
        ax.grid(axis="y", alpha=0.3)
    # One legend for every panel, above them: inside a panel it covered the bars of a task.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=max(len(scorers), 1), fontsize=8)
    return fig
