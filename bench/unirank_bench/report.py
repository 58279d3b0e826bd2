"""The run's verdicts against the issue's targets, the Markdown report and the PNG plots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from unirank.server.config import ProfileError, load_profile
from unirank_bench.servers import PROFILES, WORKERS_TARGET
from unirank_bench.workload import MIXED, USE_CASES

CDF_POINTS = np.concatenate([np.linspace(0.0, 0.98, 50), [0.99, 0.995, 0.999, 1.0]])
"""Quantiles stored per run (results.json ``cdf_ms``) for the CDF plots (dense up to p99, then the tail)."""


def markers(section: str) -> tuple[str, str]:
    """The comments around one generated block of the Markdown report."""
    return f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"


def find(
    results: dict[str, Any], target: str, workload: str, concurrency: int | None = None, mode: str = "closed"
) -> dict[str, Any] | None:
    for run in results["runs"]:
        if (
            run["target"] == target
            and run["workload"] == workload
            and run["mode"] == mode
            and (concurrency is None or run["concurrency"] == concurrency)
        ):
            return run
    return None


def _p50(run: dict[str, Any] | None) -> float | None:
    return run["latency_ms"]["p50_ms"] if run else None


def _verdict(
    name: str, measured: float | None, limit: float | None, detail: str, at_most: bool
) -> dict[str, Any]:
    ok = None
    if measured is not None and limit is not None:
        ok = measured <= limit if at_most else measured >= limit
    return {
        "target": name,
        "measured": measured,
        "limit": limit,
        "at_most": at_most,
        "pass": ok,
        "detail": detail,
    }


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per target of the issue; ``pass`` is None where the run lacks the data."""
    verdicts: list[dict[str, Any]] = []
    compute = results.get("floors", {}).get("compute", {})
    ort = compute.get("onnxruntime", {})
    rt = "unirank/cpu-realtime"
    for use_case in USE_CASES:
        run = find(results, rt, use_case, 1)
        transport = _p50(find(results, "floor/transport", use_case, 1))
        score_ms = ort[use_case]["p50_us"] / 1e3 if use_case in ort else None
        floor = transport + score_ms if transport is not None and score_ms is not None else None
        ratio = _p50(run) / floor if run and floor else None
        verdicts.append(
            _verdict(
                f"cpu-realtime C=1 {use_case}: p50 / (transport + compute floor) <= 1.25",
                ratio,
                1.25,
                f"p50 {_fmt(_p50(run))} ms vs transport {_fmt(transport)} + compute {_fmt(score_ms)} ms",
                at_most=True,
            )
        )
    mine = find(results, rt, MIXED, 32)
    floor_run = find(results, "floor/aio-ort", MIXED, 32)
    peer = find(results, "mlserver", MIXED, 32)
    mine_rps = mine["throughput_rps"] if mine else None
    verdicts.append(
        _verdict(
            "cpu-realtime C=32 mixed: throughput / bare aio + ONNX Runtime floor >= 0.85",
            mine_rps / floor_run["throughput_rps"] if mine_rps and floor_run else None,
            0.85,
            f"{_fmt(mine_rps, 0)} vs {_fmt(floor_run and floor_run['throughput_rps'], 0)} requests/s",
            at_most=False,
        )
    )
    verdicts.append(
        _verdict(
            "cpu-realtime C=32 mixed: throughput / MLServer >= 1.3",
            mine_rps / peer["throughput_rps"] if mine_rps and peer else None,
            1.3,
            f"{_fmt(mine_rps, 0)} vs {_fmt(peer and peer['throughput_rps'], 0)} requests/s"
            + ("" if peer else f" (MLServer: {results.get('mlserver', {}).get('status')})"),
            at_most=False,
        )
    )
    batched = find(results, "unirank/gpu-batched", MIXED, 64)
    unbatched = find(results, "unirank/gpu-batched-nobatch", MIXED, 64)
    verdicts.append(
        _verdict(
            "gpu-batched (on CPU) C=64 mixed: throughput batching on / off >= 2",
            batched["throughput_rps"] / unbatched["throughput_rps"] if batched and unbatched else None,
            2.0,
            f"{_fmt(batched and batched['throughput_rps'], 0)} vs "
            f"{_fmt(unbatched and unbatched['throughput_rps'], 0)} requests/s",
            at_most=False,
        )
    )
    batch_ms = compute.get("batch", {}).get("torch", {}).get("p50_us")
    delay_ms = _max_queue_delay_ms()
    limit = 2 * delay_ms + batch_ms / 1e3 if batch_ms is not None and delay_ms is not None else None
    verdicts.append(
        _verdict(
            "gpu-batched (on CPU) C=64 mixed: p99 <= 2 x max_queue_delay_ms + one batch's compute",
            batched["latency_ms"]["p99_ms"] if batched else None,
            limit,
            f"limit = 2 x {_fmt(delay_ms)} ms + {_fmt(batch_ms and batch_ms / 1e3)} ms "
            f"(torch, {compute.get('batch', {}).get('rows')} rows, 1 thread)",
            at_most=True,
        )
    )
    # Closed loop at C = 64 saturates the server, so its p99 is mostly waiting for a turn (Little's
    # law: 64 callers / throughput); below capacity (open loop) p99 is the batcher's own latency.
    open_run = next(
        (r for r in results["runs"] if r["target"] == "unirank/gpu-batched" and r["mode"] == "open"), None
    )
    verdicts.append(
        _verdict(
            "gpu-batched (on CPU) open loop, below capacity: p99 <= 2 x max_queue_delay_ms + one batch",
            open_run["latency_ms"]["p99_ms"] if open_run else None,
            limit,
            f"{_fmt(open_run and open_run['rate_rps'], 0)} requests/s offered, "
            f"{_fmt(open_run and open_run['throughput_rps'], 0)} answered"
            if open_run
            else "no open-loop run",
            at_most=True,
        )
    )
    one = find(results, rt, MIXED, 32)
    two = find(results, f"unirank/{WORKERS_TARGET}", MIXED, 32)
    verdicts.append(
        _verdict(
            "cpu-realtime --workers 2, C=32 mixed: throughput >= 1.7 x one worker",
            two["throughput_rps"] / one["throughput_rps"] if one and two else None,
            1.7,
            f"{_fmt(two and two['throughput_rps'], 0)} vs {_fmt(one and one['throughput_rps'], 0)} "
            "requests/s (servers, load generator and every other process share the machine's cores)",
            at_most=False,
        )
    )
    startup = results.get("startup", {}).get("cpu-realtime")
    verdicts.append(
        _verdict(
            "cpu-realtime start-up to SERVING < 2 s (median)",
            startup["median_s"] if startup else None,
            2.0,
            f"samples {[round(s, 2) for s in startup['samples_s']]} s" if startup else "not measured",
            at_most=True,
        )
    )
    rss = [r["server_peak_rss_mb_main"] for r in results["runs"] if r["target"] == rt]
    if startup:
        rss.append(startup["rss_mb"])
    verdicts.append(
        _verdict(
            "cpu-realtime RSS < 250 MB per process (peak over the run)",
            max(rss) if rss else None,
            250.0,
            "VmHWM of the server process",
            at_most=True,
        )
    )
    torch_seen = [r["torch_imported"] for r in results["runs"] if r["target"] == rt]
    mapped = startup["libtorch_mapped"] if startup else None
    never = None if not torch_seen and mapped is None else not (any(torch_seen) or bool(mapped))
    verdicts.append(
        {
            "target": "cpu-realtime never imports torch",
            "measured": None,
            "limit": None,
            "at_most": True,
            "pass": never,
            "detail": f"'torch' in sys.modules during runs: {sorted(set(torch_seen))}; "
            f"libtorch in /proc/PID/maps of `unirank serve`: {mapped}",
        }
    )
    return verdicts


def _max_queue_delay_ms() -> float | None:
    path = PROFILES / "gpu-batched.toml"
    try:
        return load_profile(path).model.batching.max_queue_delay_ms
    except ProfileError:
        return None


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(
    results: dict[str, Any],
    verdicts: list[dict[str, Any]],
    plots: dict[str, str],
    section: str = "results",
    after_targets: list[str] | None = None,
) -> str:
    """The generated part of docs/benchmarks.md (between the markers); ``after_targets``: lines
    of Markdown placed after the targets table."""
    begin, end = markers(section)
    lines: list[str] = [begin, ""]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(results["started_unix_s"]))
    host = results["host"]
    load = results["load"]
    foreign = [r["foreign_cpu_cores"] for r in results["runs"]]
    lines += [
        f"Run of {started}{' (quick mode: smoke test, not a measurement)' if results['quick'] else ''}"
        + (
            f", {results['settings']['rounds']} rounds (each row: the round with the median "
            "throughput; with an even count, the lower middle one)"
            if results["settings"].get("rounds", 1) > 1
            else ""
        )
        + ": "
        f"{host['cpus']} CPUs, Python {host['python']}, grpcio {host['grpcio']}, "
        f"onnxruntime {host['onnxruntime']}; artifact `{results['artifact']['model_version']}` "
        f"({results['artifact']['items']} items); git `{results['git']['commit'][:10]}`"
        + (
            f" with uncommitted changes in {len(results['git']['dirty_paths_outside_bench'])} paths"
            if results["git"]["dirty_paths_outside_bench"]
            else ""
        )
        + ".",
        "",
        f"Load average before the run {load['before']}, after {load.get('after')}; waited "
        f"{load['waited_s']:.0f} s for a quiet machine. CPU used by other processes during the "
        f"measurement windows: median {_median(foreign):.2f}, max {max(foreign, default=0):.2f} cores "
        "(machine busy time minus the server's, the load generator's and the orchestrator's).",
        "",
        "### Targets",
        "",
    ]
    rows = []
    for v in verdicts:
        status = {True: "pass", False: "**FAIL**", None: "n/a"}[v["pass"]]
        limit = "" if v["limit"] is None else ("≤ " if v["at_most"] else "≥ ") + _fmt(v["limit"])
        rows.append([v["target"], _fmt(v["measured"]), limit, status, v["detail"]])
    lines += _table(["target", "measured", "limit", "verdict", "detail"], rows)
    lines += ["", *(after_targets or []), "### Floors", ""]
    compute = results.get("floors", {}).get("compute", {})
    rows = []
    for name in [*USE_CASES, MIXED]:
        ort = compute.get("onnxruntime", {}).get(name)
        if not ort:
            continue
        enc = compute.get("encode_and_onnxruntime", {}).get(name, {})
        torch = compute.get("torch", {}).get(name, {}) if isinstance(compute.get("torch"), dict) else {}
        transport = find(results, "floor/transport", name, 1)
        aio1 = find(results, "floor/aio-ort", name, 1)
        aio32 = find(results, "floor/aio-ort", name, 32)
        rows.append(
            [
                name,
                f"{ort['candidates_mean']:.0f}",
                f"{ort['p50_us']:.0f} / {ort['p99_us']:.0f}",
                _fmt(enc.get("p50_us"), 0),
                _fmt(torch.get("p50_us"), 0),
                _fmt(_p50(transport), 3),
                _fmt(_rps(results, "floor/transport", name, 32), 0),
                _fmt(_p50(aio1), 3),
                _fmt(aio32 and aio32["throughput_rps"], 0),
            ]
        )
    lines += _table(
        [
            "workload",
            "candidates (mean)",
            "ORT score p50 / p99 µs",
            "encode + ORT p50 µs",
            "torch p50 µs",
            "transport p50 ms (C=1)",
            "transport req/s (C=32)",
            "aio + ORT p50 ms (C=1)",
            "aio + ORT req/s (C=32)",
        ],
        rows,
    )
    batch = compute.get("batch", {})
    if batch:
        lines += [
            "",
            f"One batch of {batch['rows']} mixed requests ({batch['candidates']} candidate columns after "
            f"padding), 1 thread: torch p50 {batch['torch']['p50_us'] / 1e3:.2f} ms, ONNX Runtime p50 "
            f"{batch['onnxruntime']['p50_us'] / 1e3:.2f} ms.",
        ]
    lines += ["", "### Start-up", ""]
    rows = [
        [
            name,
            ", ".join(f"{s:.2f}" for s in s_["samples_s"]),
            f"{s_['rss_mb']:.0f}",
            str(s_["libtorch_mapped"]),
        ]
        for name, s_ in results.get("startup", {}).items()
    ]
    lines += _table(["profile", "exec → health SERVING (s)", "RSS idle (MB)", "libtorch mapped"], rows)
    peer = results.get("mlserver", {})
    lines += ["", "### MLServer", ""]
    if peer.get("status") == "ran":
        versions = peer["versions"]
        lines.append(
            f"MLServer {versions.get('mlserver')} (onnxruntime {versions.get('onnxruntime')}, "
            f"grpcio {versions.get('grpcio')}, protobuf {versions.get('protobuf')}), custom runtime "
            "`bench/mlserver_runtime/unirank_mlserver.py`, settings "
            f"`{peer['settings']}`; ready in {peer['startup_s']:.2f} s. Driven through V2 gRPC ModelInfer "
            "with the same tensors (typed INT64 contents)."
        )
        lines += ["", "UniRank cpu-realtime / MLServer, same requests and candidate counts:", ""]
        rows = []
        for name in [*USE_CASES, MIXED]:
            for c in results["settings"]["concurrency"]:
                mine, theirs = (
                    find(results, "unirank/cpu-realtime", name, c),
                    find(results, "mlserver", name, c),
                )
                if mine and theirs and theirs["throughput_rps"] and _p50(mine):
                    rows.append(
                        [
                            name,
                            str(c),
                            f"{mine['throughput_rps'] / theirs['throughput_rps']:.2f}",
                            f"{_p50(theirs) / _p50(mine):.2f}",  # type: ignore[operator]
                            f"{theirs['server_cpu_ms_per_request'] / mine['server_cpu_ms_per_request']:.2f}"
                            if mine["server_cpu_ms_per_request"] and theirs["server_cpu_ms_per_request"]
                            else "–",
                        ]
                    )
        lines += _table(
            [
                "workload",
                "C",
                "throughput ratio",
                "p50 speed-up (MLServer p50 / UniRank p50)",
                "CPU/request ratio (MLServer / UniRank)",
            ],
            rows,
        )
    else:
        lines.append(f"Not measured: {peer.get('status')}. {peer.get('error', '')}")
    if results.get("failures"):
        lines += ["", "### Failures", ""]
        lines += [f"- `{f['target']}`: " + f["error"].splitlines()[0] for f in results["failures"]]
    lines += ["", "### All runs", ""]
    lines += [
        "Closed loop: C callers each sending the next request when the last is answered (after a "
        "refusal carrying RetryInfo, e.g. RESOURCE_EXHAUSTED from cpu-realtime's bounded admission "
        "line, a caller first waits as long as it asks, like any well-behaved gRPC client; refusals "
        "are listed under errors, req/s counts answers only); open loop: "
        "a fixed rate, latency from the scheduled send time. CPU/request: the server process's "
        "user + system time over the window divided by answers; client CPU likewise for the load "
        "generator. RSS: the server's main process at the end of the window. Batch: mean requests per "
        "model call (1 = no batcher).",
        "",
    ]
    rows = []
    for r in results["runs"]:
        lat = r["latency_ms"]
        rows.append(
            [
                r["target"],
                r["workload"],
                f"C={r['concurrency']}" if r["mode"] == "closed" else f"open {r['rate_rps']:.0f}/s",
                f"{r['throughput_rps']:.0f}",
                _fmt(lat["p50_ms"]),
                _fmt(lat["p90_ms"]),
                _fmt(lat["p99_ms"]),
                _fmt(r["server_cpu_ms_per_request"], 3),
                _fmt(r["client_cpu_ms_per_request"], 3),
                _fmt(r["server_rss_mb_main"], 0),
                _fmt(r["batch_size_mean"], 1),
                _fmt(r["cache_hit_fraction"] and 100 * r["cache_hit_fraction"], 0),
                _fmt(r["fallback_fraction"] and 100 * r["fallback_fraction"], 0),
                ", ".join(f"{k} {v}" for k, v in r["errors"].items())
                + (f" dropped {r['dropped']}" if r["dropped"] else ""),
                _fmt(r["foreign_cpu_cores"]),
            ]
        )
    lines += _table(
        [
            "target",
            "workload",
            "load",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "server CPU ms/req",
            "client CPU ms/req",
            "RSS MB",
            "batch",
            "cache %",
            "fallback %",
            "errors",
            "others' CPU (cores)",
        ],
        rows,
    )
    if plots:
        lines += ["", "### Plots", ""]
        lines += [f"![{name}]({path})" for name, path in plots.items()]
    lines += ["", end]
    return "\n".join(lines)


def _rps(results: dict[str, Any], target: str, workload: str, c: int) -> float | None:
    run = find(results, target, workload, c)
    return run["throughput_rps"] if run else None


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def write_markdown(path: Path, generated: str, template: str, section: str = "results") -> None:
    """Replace the generated block of ``path``, keeping the hand-written text around it."""
    begin, end = markers(section)
    text = path.read_text() if path.exists() else template
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + generated + tail
    else:
        text = text.rstrip() + "\n\n" + generated + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def plot(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """latency-cdf.png (per use-case, C=1 and C=32) and throughput.png (mixed, vs concurrency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    targets = list(dict.fromkeys(r["target"] for r in results["runs"]))
    colours = {t: f"C{i}" for i, t in enumerate(targets)}
    workloads = [w for w in [*USE_CASES, MIXED] if any(r["workload"] == w for r in results["runs"])]
    cdf_path = out_dir / "latency-cdf.png"
    columns = 3
    rows = (len(workloads) + 1 + columns - 1) // columns  # one more panel for the legend
    fig, grid = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False, sharey=True)
    panels = [ax for row in grid for ax in row]
    concurrencies = [c for c in (1, 32) if c in results["settings"]["concurrency"]]
    concurrencies = concurrencies or results["settings"]["concurrency"][:1]

    for ax, workload in zip(panels, workloads, strict=False):
        for target in targets:
            for c, style in zip(concurrencies, ("-", "--"), strict=False):
                run = find(results, target, workload, c)
                if run and run["cdf_ms"]:
                    ax.plot(run["cdf_ms"], CDF_POINTS, style, color=colours[target], label=f"{target} C={c}")
        ax.set_xscale("log")
        ax.set_title(workload)
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.grid(True, which="both", alpha=0.3)
    legend: dict[str, Any] = {}
    for ax in panels[: len(workloads)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    for ax in panels[len(workloads) :]:
        ax.axis("off")
    panels[len(workloads)].legend(handles, labels, loc="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(cdf_path, dpi=100)
    plt.close(fig)

    thr_path = out_dir / "throughput.png"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for target in targets:
        workload = MIXED if find(results, target, MIXED) else "search"
        points = sorted(
            (r["concurrency"], r["throughput_rps"], r["latency_ms"]["p99_ms"])
            for r in results["runs"]
            if r["target"] == target and r["workload"] == workload and r["mode"] == "closed"
        )
        if not points:
            continue
        xs = [p[0] for p in points]
        left.plot(xs, [p[1] for p in points], "o-", color=colours[target], label=f"{target} ({workload})")
        right.plot(xs, [p[2] for p in points], "o-", color=colours[target], label=target)
    for ax, label in ((left, "throughput (requests/s)"), (right, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    left.set_yscale("log")
    right.set_yscale("log")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(thr_path, dpi=110)
    plt.close(fig)
    return {"latency CDF per use-case": cdf_path, "throughput and p99 vs concurrency": thr_path}
