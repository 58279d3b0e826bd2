"""The quality report: a comparison result (``unirank compare``) as Markdown with PNG plots.

``make quality`` runs the comparison on MovieLens and writes ``docs/quality.md`` with this module;
the plots go to a folder named after the report (``docs/quality/``).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from unirank.artifact import TASKS
from unirank.training.compare_report import (
    METRICS,
    NO_TASK_TYPE,
    PEERS,
    POPULARITY,
    SINGLE_TASK,
    TARGET_METRIC,
    UNIFIED,
)

SHOWN_METRICS: tuple[str, ...] = METRICS
NDCG_PLOT = "ndcg.png"
METRICS_PLOT = "metrics.png"
CURVES_PLOT = "training_curves.png"


METHOD_ORDER: tuple[str, ...] = (UNIFIED, SINGLE_TASK, NO_TASK_TYPE)


def _tasks(result: Mapping[str, Any]) -> list[str]:
    """Task names in registry order (a saved JSON has its keys sorted)."""
    names = [spec.name for spec in TASKS if spec.name in result["tasks"]]
    return names + sorted(set(result["tasks"]) - set(names))


def _methods(by: Mapping[str, Any]) -> list[tuple[str, Mapping[str, float], str]]:
    """(label, means, key path) per method of one task: unified, single-task, no task type,
    ablations, popularity, then peers (flattened as ``peer:NAME``)."""
    order = [m for m in METHOD_ORDER if m in by]
    order += sorted(m for m in by if m not in (*METHOD_ORDER, POPULARITY, PEERS))
    order += [m for m in (POPULARITY,) if m in by]
    out: list[tuple[str, Mapping[str, float], str]] = [(m, by[m], m) for m in order]
    for peer, values in sorted(by.get(PEERS, {}).items()):
        out.append((f"peer:{peer}", values, f"{PEERS}/{peer}"))
    return out


def _lookup(table: Mapping[str, Any], path: str) -> Mapping[str, float]:
    node: Any = table
    for part in path.split("/"):
        node = node.get(part, {})
    return node  # type: ignore[no-any-return]


def markdown_table(result: Mapping[str, Any]) -> str:
    """Per task and method: each metric as mean ± std over seeds, and the unified model's delta."""
    lines = [
        "| task | method | NDCG@10 | Recall@10 | MRR | coverage@10 | unified vs it (NDCG@10) |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in _tasks(result):
        for label, values, path in _methods(result["tasks"][task]):
            spread = _lookup(result["std"][task], path)
            cells = [
                f"{values[m]:.4f} ± {spread.get(m, 0.0):.4f}" if m in values else "" for m in SHOWN_METRICS
            ]
            delta = None if label == UNIFIED else _lookup(result["delta"][task], path).get(TARGET_METRIC)
            change = "" if delta is None else f"{delta:+.1%}"
            name = f"**{label}**" if label == UNIFIED else label
            lines.append(f"| {task} | {name} | " + " | ".join(cells) + f" | {change} |")
    return "\n".join(lines)


def plot_ndcg(result: Mapping[str, Any], path: Path) -> None:
    """Grouped bars: NDCG@10 mean ± std per task and method."""
    tasks = _tasks(result)
    methods = list(dict.fromkeys(label for task in tasks for label, _, _ in _methods(result["tasks"][task])))
    fig = Figure(figsize=(12, 4.5))
    ax = fig.subplots()
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        means, errors, xs = [], [], []
        for x, task in enumerate(tasks):
            found = {label: (v, p) for label, v, p in _methods(result["tasks"][task])}
            if method in found:
                values, key = found[method]
                means.append(values[TARGET_METRIC])
                errors.append(_lookup(result["std"][task], key).get(TARGET_METRIC, 0.0))
                xs.append(x + i * width)
        ax.bar(xs, means, width, yerr=errors, capsize=2, label=method)
    ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(tasks))])
    ax.set_xticklabels(tasks)
    ax.set_ylabel("test NDCG@10 (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_metrics(result: Mapping[str, Any], path: Path) -> None:
    """One panel per metric: unified vs single-task vs no-task-type vs popularity vs best peer."""
    tasks = _tasks(result)
    fig = Figure(figsize=(4 * len(SHOWN_METRICS), 4))
    axes = fig.subplots(1, len(SHOWN_METRICS), squeeze=False)[0]
    series = ("unified", "single_task", "no_task_type", "popularity", "best peer")
    width = 0.8 / len(series)
    for ax, metric in zip(axes, SHOWN_METRICS, strict=True):
        for i, name in enumerate(series):
            values = []
            for task in tasks:
                by = result["tasks"][task]
                if name == "best peer":
                    peers = by.get(PEERS, {})
                    values.append(max((v.get(metric, 0.0) for v in peers.values()), default=0.0))
                else:
                    values.append(by.get(name, {}).get(metric, 0.0))
            ax.bar([x + i * width for x in range(len(tasks))], values, width, label=name)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(tasks))])
        ax.set_xticklabels(tasks, rotation=20, fontsize=8)
        ax.set_title(f"test {metric}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_curves(result: Mapping[str, Any], path: Path) -> None:
    """Training loss and validation NDCG@10 per task by epoch, of the unified model (every seed)."""
    runs = [run for run in result.get("runs", []) if run["variant"] == UNIFIED]
    fig = Figure(figsize=(11, 4))
    loss_ax, ndcg_ax = fig.subplots(1, 2)
    for run in runs:
        epochs = [e["epoch"] for e in run["history"]]
        tasks = list(dict.fromkeys(t for e in run["history"] for t in e["train_loss"]))
        for i, task in enumerate(tasks):
            style = {"color": f"C{i}", "alpha": 0.8, "label": task if run["seed"] == 0 else None}
            loss_ax.plot(epochs, [e["train_loss"].get(task) for e in run["history"]], **style)
            ndcg_ax.plot(epochs, [e["validation_ndcg"].get(task) for e in run["history"]], **style)
        ndcg_ax.axvline(run["best_epoch"], color="grey", linestyle=":", alpha=0.6)
    loss_ax.set(title="unified: training loss L_t per task", xlabel="epoch", ylabel="sampled softmax")
    ndcg_ax.set(title="unified: validation NDCG@10 (dotted: kept epoch)", xlabel="epoch", ylabel="NDCG@10")
    for ax in (loss_ax, ndcg_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _reading_notes(result: Mapping[str, Any]) -> list[str]:
    """How to read the table, and what it does not show."""
    ablations = result.get("ablations", {})
    lines = [
        "## How to read it",
        "",
        "- **unified**: one model, every use-case, task type as an input (one head per task); "
        "a task that stops improving retires and is distilled from its best snapshot; every model "
        "(single-task too) scores with the co-engagement and MF-score inputs (`mf_factors`: ALS's item "
        "factors of the training plays), and each head's weight on popularity, co-engagement and "
        "the MF score is calibrated on validation ([training.md](training.md)). Trained with the "
        "data set's `--config` (`unirank tune`).",
        "- **single_task**: one model per use-case, same architecture and budget (the same steps of "
        "the same batch size, all on its task), early-stopped on its own task.",
        "- **no_task_type**: the unified model without the task-type input (one shared head).",
        "- **popularity**: per use-case: most played unseen items (notification), most played "
        "items (related), query words matched then popularity (search), most played in the "
        "category (category), most played unseen new releases (new_releases).",
        "- **peer:…**: classic methods from `implicit` and `rank_bm25`, trained on the training "
        "split, hyperparameters chosen on validation from a small grid, ties broken by popularity "
        "(see `unirank.training.peers`). BPR cannot fold in a user's newer interactions, so it "
        "scores with the user's training factors; ALS recomputes them from the row's history.",
    ]
    for name, change in ablations.items():
        lines.append(f"- **{name}**: the unified model with {change}.")
    lines += [
        "",
        "Differences within about two standard deviations are not evidence either way; the "
        "per-user split, the capped evaluation rows (at most 50 per user and task) and the label "
        "rules are in [data.md](data.md).",
    ]
    return lines


def _skipped_lines(result: Mapping[str, Any]) -> list[str]:
    """The use-cases the data could not train or measure, with the reason each was skipped."""
    skipped = result.get("skipped_tasks", {})
    if not skipped:
        return []
    lines = ["Skipped before training (no model, peer or baseline is measured on them):", ""]
    lines += [f"- **{task}**: {reason}" for task, reason in skipped.items()]
    return [*lines, ""]


def write_report(result: Mapping[str, Any], path: Path, command: str | None = None) -> Path:
    """Write the Markdown report of one comparison and its plots (into ``<report stem>/``)."""
    return write_reports([result], path, command)


def write_reports(results: Sequence[Mapping[str, Any]], path: Path, command: str | None = None) -> Path:
    """One report for comparisons on several data sets: a section each, plots in
    ``<report stem>/<data set>/`` (``<report stem>/`` alone for one data set). Returns the path."""
    path = Path(path)
    minutes = sum(r["seconds"] for r in results) / 60
    sources = ", ".join(f"`{_data_name(r)}`" for r in results)
    lines = [
        f"# Offline quality: one model vs one per use-case ({len(TASKS)} use-cases)",
        "",
        f"Generated by `{command or 'make quality'}` on {dt.date.today().isoformat()} from {sources} "
        f"in {minutes:.1f} minutes (the comparisons' own times, added). "
        "Do not edit by hand: rerun `make quality`.",
        "",
    ]
    if len(results) > 1:
        lines += ["| data set | targets met | skipped use-cases |", "|---|---|---|"]
        for result in results:
            targets = result.get("targets", {})
            passed = sum(1 for t in targets.values() if t["pass"])
            skipped = ", ".join(result.get("skipped_tasks", {})) or "none"
            lines.append(f"| `{_data_name(result)}` | {passed} of {len(targets)} | {skipped} |")
        lines.append("")
    for result in results:
        plots = path.with_suffix("")
        if len(results) > 1:
            plots = plots / _slug(_data_name(result))
        lines += _section(result, plots, plots.relative_to(path.parent).as_posix(), len(results) > 1)
    path.write_text("\n".join(lines) + "\n")
    return path


def _data_name(result: Mapping[str, Any]) -> str:
    size = result.get("config", {}).get("size")
    data = str(result["data"])
    return f"{data} --size {size}" if data == "synthetic" and size else data


def _slug(name: str) -> str:
    tail = name.rstrip("/").split("/")[-1].split(":")[-1].replace(" --size ", "-")
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in tail).strip("-") or "data"


def _section(result: Mapping[str, Any], plots: Path, rel: str, nested: bool) -> list[str]:
    """One data set's part of the report (headings one level down when ``nested``)."""
    plots.mkdir(parents=True, exist_ok=True)
    plot_ndcg(result, plots / NDCG_PLOT)
    plot_metrics(result, plots / METRICS_PLOT)
    plot_curves(result, plots / CURVES_PLOT)
    h = "###" if nested else "##"
    protocol = result.get("protocol", {})
    targets = result.get("targets", {})
    passed = sum(1 for t in targets.values() if t["pass"])
    config = result.get("config", {})
    lines = []
    if nested:
        lines += [
            f"## `{_data_name(result)}`",
            "",
            f"Seeds {result['seeds']}, {result['seconds'] / 60:.1f} minutes.",
            "",
        ]
    else:
        lines += [f"Data `{_data_name(result)}`, seeds {result['seeds']}.", ""]
    lines += [
        f"{h} Protocol",
        "",
        f"- Split: {protocol.get('split', '')}.",
        *([f"- Seeds: {protocol['seeds']}."] if "seeds" in protocol else []),
        f"- Test rows per task (the same for every method and seed): {protocol.get('test_rows', {})}.",
        f"- Ranking: {protocol.get('ranking', '')}.",
        f"- Selection: {protocol.get('selection', '')}; the test split is ranked once per reported number.",
        f"- Budget: {protocol.get('budget', '')}.",
        "- Labels per task and the reasoning behind them: [data.md](data.md).",
        "",
        f"{h} Results",
        "",
        "Mean ± standard deviation over seeds (popularity and the deterministic peers do not vary "
        "with the seed). The last column is the unified model's relative NDCG@10 difference.",
        "",
        markdown_table(result),
        "",
        *_skipped_lines(result),
        f"![NDCG@10 by task and method]({rel}/{NDCG_PLOT})",
        "",
        f"![Every metric, unified vs the alternatives]({rel}/{METRICS_PLOT})",
        "",
        f"![Training curves of the unified model]({rel}/{CURVES_PLOT})",
        "",
        f"{h} Targets ({passed} of {len(targets)} met)",
        "",
    ]
    for name in sorted(targets, key=lambda n: (_tasks(result).index(n.split(":")[0]), n)):
        target = targets[name]
        mark = "met" if target["pass"] else "**missed**"
        lines.append(f"- {name}: {target['unified']:.4f} vs {target['other']:.4f}: {mark}")
    notes = _reading_notes(result)
    notes[0] = notes[0].replace("## ", f"{h} ", 1)
    lines += ["", *notes, "", f"{h} Configuration"]
    lines += [
        "Unified model (every variant differs only where its name says):",
        "",
        "```json",
        json.dumps(
            {k: v for k, v in config.items() if k not in ("data", "size", "log_every", "seed")},
            indent=2,
            sort_keys=True,
        ),
        "```",
        "",
    ]
    if result.get("single_task_config"):
        lines += [
            "Single-task models: the unified configuration with these tuned fields per use-case "
            "(`unirank tune --single-task`, the same budget per model):",
            "",
            "```json",
            json.dumps(result["single_task_config"], indent=2, sort_keys=True),
            "```",
            "",
        ]
    lines += [
        "Peer hyperparameters chosen on validation (per task and seed):",
        "",
        "<details><summary>peer_params</summary>",
        "",
        "```json",
        json.dumps(result.get("peer_params", {}), indent=2, sort_keys=True),
        "```",
        "",
        "</details>",
        "",
        "Training runs (best epoch by validation / epochs run / seconds):",
        "",
    ]
    for run in result.get("runs", []):
        lines.append(
            f"- seed {run['seed']} {run['variant']}: epoch {run['best_epoch']} / {run['epochs_run']} / "
            f"{run['seconds']:.0f}s"
        )
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unirank.training.quality REPORT.md RESULT.json...``: one report from saved
    comparison results (``unirank compare --json``), a section per data set."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = None
    if len(args) > 1 and args[0] == "--command":  # what produced the results, when not make quality
        command, args = args[1], args[2:]
    if len(args) < 2 or not args[0].endswith(".md"):
        print(
            "usage: python -m unirank.training.quality [--command TEXT] REPORT.md RESULT.json...",
            file=sys.stderr,
        )
        return 2
    results = [json.loads(Path(arg).read_text()) for arg in args[1:]]
    write_reports(results, Path(args[0]), command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
