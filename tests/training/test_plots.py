"""The training plots: legends outside the data, whole-number epochs, files written."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg

from unirank.training.plots import (
    plot_task_metrics,
    plot_training_curves,
    task_metrics_figure,
    training_curves_figure,
)
from unirank.training.train import EpochLog

TASKS = ("notification", "related_items", "search", "category", "new_releases")


def _history(epochs: int) -> list[EpochLog]:
    return [
        EpochLog(
            epoch=e,
            train_loss={t: 3.0 - 0.1 * e for t in TASKS},
            validation_ndcg={t: 0.1 + 0.01 * e * (i + 1) for i, t in enumerate(TASKS)},
            selection_score=0.2 + 0.01 * e,
            seconds=1.0,
        )
        for e in range(1, epochs + 1)
    ]


def test_training_curves_keep_the_legend_off_the_lines_and_ticks_on_whole_epochs(tmp_path: Path) -> None:
    fig = training_curves_figure(_history(3), best_epoch=2)
    FigureCanvasAgg(fig).draw()  # lays the figure out as saving it does
    for ax in fig.axes:
        assert ax.get_legend() is None
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        legend_box = fig.legends[0].get_window_extent()
        assert not ax.get_window_extent().overlaps(legend_box)
    plot_training_curves(_history(3), tmp_path / "curves.png", best_epoch=2)
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_task_metrics_legend_covers_no_bars(tmp_path: Path) -> None:
    metrics = {
        t: {s: {"recall@10": 0.5, "ndcg@10": 0.3} for s in ("model", "popularity", "single_task")}
        for t in TASKS
    }
    fig = task_metrics_figure(metrics)
    FigureCanvasAgg(fig).draw()  # lays the figure out as saving it does
    (legend,) = fig.legends
    for ax in fig.axes:
        assert ax.get_legend() is None and not ax.get_window_extent().overlaps(legend.get_window_extent())
    plot_task_metrics(metrics, tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").stat().st_size > 0
