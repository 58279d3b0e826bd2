"""The scale benchmark's report: a Markdown block in docs/benchmarks.md and PNG plots against
catalogue size (:mod:`unirank_bench.scale` measures)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench-scale:begin -->", "<!-- bench-scale:end -->"
"""The block of docs/benchmarks.md this report owns; written at the end of the page when missing."""
PLOTS = ("scale-latency.png", "scale-throughput.png", "scale-resources.png")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def tables(result: dict[str, Any]) -> str:
    rows = result["sizes"]
    tasks = list(rows[0]["use_cases"])
    ef = str(result["ef_search"])
    lines = [
        f"Measured {result['when']} on {result['cores']} cores shared with the load generator "
        f"({result['seconds']:g} s per load after {result.get('warmup_s', 1.0):g} s of warm-up; "
        f"approximate `embedding` search at ef {ef}); `{result['command']}`.",
        "",
        "| items | artifact MB | start-up s (median) | RSS idle / after load / peak MB | anon + file MB | "
        f"recall@200 at ef {ef} | index search µs | related-items recall@50 | "
        "C=1 p50 ms (mean of use-cases) | load avg (1 min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        p50 = statistics.mean(u["c1"]["p50_ms"] for u in row["use_cases"].values())
        startup = statistics.median(row["startup_s"])
        lines.append(
            f"| {row['items']:,} | {_fmt(row['artifact_mb'], 0)} | {_fmt(startup)} | "
            f"{_fmt(row['rss_idle_mb'], 0)} / {_fmt(row['rss_mb'], 0)} / {_fmt(row['peak_rss_mb'], 0)} | "
            f"{_fmt(row.get('rss_anon_mb'), 0)} + {_fmt(row.get('rss_file_mb'), 0)} | "
            f"{_fmt(row['recall'][ef]['recall_at_200'], 3)} | {_fmt(row['recall'][ef]['search_us'], 0)} | "
            f"{_fmt(row.get('related_recall_at_50'), 3)} | "
            f"{_fmt(p50)} | {_fmt(row['loadavg']['before'][0], 1)}–{_fmt(row['loadavg']['after'][0], 1)} |"
        )
    lines += ["", "Per use-case, retrieval on: C = 1 p50 / p99 ms, C = 32 requests/s.", ""]
    lines.append("| items | " + " | ".join(tasks) + " |")
    lines.append("| --- |" + " --- |" * len(tasks))
    for row in rows:
        cells = [
            f"{_fmt(u['c1']['p50_ms'])} / {_fmt(u['c1']['p99_ms'])}, {_fmt(u['c32']['requests_per_s'], 0)}/s"
            for u in row["use_cases"].values()
        ]
        lines.append(f"| {row['items']:,} | " + " | ".join(cells) + " |")
    efs = list(rows[0]["recall"])
    lines += [
        "",
        "Recall@200 of the shipped HNSW index against exact search, by search list (µs per query):",
        "",
    ]
    lines.append("| items | " + " | ".join(f"ef {e}" for e in efs) + " |")
    lines.append("| --- |" + " --- |" * len(efs))
    for row in rows:
        cells = [f"{r['recall_at_200']:.3f} ({r['search_us']:,.0f} µs)" for r in row["recall"].values()]
        lines.append(f"| {row['items']:,} | " + " | ".join(cells) + " |")
    failed = sum(
        u[c]["failures"] + u[c]["fallbacks"] for r in rows for u in r["use_cases"].values() for c in u
    )
    lines += ["", f"Failed or fallback answers in the measured windows: {failed}.", ""]
    lines += [f"![{name}](benchmarks/{name})" for name in PLOTS]
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["sizes"]
    items = [r["items"] for r in rows]
    tasks = list(rows[0]["use_cases"])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for task in tasks:
        axes[0].plot(items, [r["use_cases"][task]["c1"]["p50_ms"] for r in rows], marker="o", label=task)
        axes[1].plot(items, [r["use_cases"][task]["c1"]["p99_ms"] for r in rows], marker="o", label=task)
    for ax, title in zip(axes, ("C = 1 p50 (ms)", "C = 1 p99 (ms)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("catalogue items")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / PLOTS[0], dpi=110)
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(6, 4))
    for task in tasks:
        ax.plot(items, [r["use_cases"][task]["c32"]["requests_per_s"] for r in rows], marker="o", label=task)
    ax.set_xscale("log")
    ax.set_xlabel("catalogue items")
    ax.set_title("C = 32 throughput (requests/s)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / PLOTS[1], dpi=110)
    plt.close(figure)

    ef = str(result["ef_search"])
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].plot(items, [r["peak_rss_mb"] for r in rows], marker="o", label="peak RSS")
    axes[0].plot(items, [r["artifact_mb"] for r in rows], marker="o", label="artifact size")
    axes[0].set_title("MB")
    axes[0].legend(fontsize=8)
    axes[1].plot(items, [statistics.median(r["startup_s"]) for r in rows], marker="o")
    axes[1].set_title("start-up to SERVING (s)")
    axes[2].plot(items, [r["recall"][ef]["recall_at_200"] for r in rows], marker="o")
    axes[2].axhline(0.95, color="grey", linestyle="--", linewidth=1)
    axes[2].set_title(f"recall@200, ef {ef}")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("catalogue items")
    figure.tight_layout()
    figure.savefig(out / PLOTS[2], dpi=110)
    plt.close(figure)


def write_report(result: dict[str, Any], out: Path, doc: Path) -> None:
    """Plots into ``out``; the tables replace the block between :data:`BEGIN` and :data:`END` of ``doc``."""
    plot(result, out)
    text = doc.read_text()
    block = f"{BEGIN}\n{tables(result)}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## Catalogue scale (`make bench-scale`)\n\n" + block + "\n"
    doc.write_text(text)
