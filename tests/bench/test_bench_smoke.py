"""Smoke test of the benchmark harness (``make bench BENCH_ARGS=--quick``): it runs end to end
against the tiny artifact and writes results of the documented shape. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RUN_KEYS = {
    "target",
    "workload",
    "mode",
    "concurrency",
    "requests",
    "errors",
    "throughput_rps",
    "latency_ms",
    "server_cpu_ms_per_request",
    "client_cpu_ms_per_request",
    "server_rss_mb_main",
    "batch_size_mean",
    "foreign_cpu_cores",
    "loadavg_1m",
    "cdf_ms",
}


def test_quick_bench_writes_results_of_the_documented_shape(artifact_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "bench"), env.get("PYTHONPATH", "")) if p)
    command = [
        sys.executable, "-m", "unirank_bench", "--quick", "--no-mlserver",
        "--artifact", str(artifact_dir), "--out-dir", str(out), "--markdown", str(out / "benchmarks.md"),
        "--work-dir", str(tmp_path / "work"), "--warmup", "0.1", "--duration", "0.4",
        "--concurrency", "4", "--open-rate", "40", "--retrieval-runs",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert {r["target"] for r in results["runs"]} == {
        "floor/transport",
        "floor/aio-ort",
        "unirank/cpu-realtime",
    }
    for run in results["runs"]:
        assert set(run) >= RUN_KEYS, RUN_KEYS - set(run)
        assert run["requests"] > 0 and not run["errors"] and run["bad_answers"] == 0, run
        latency = run["latency_ms"]
        assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"]
        assert run["cdf_ms"] == sorted(run["cdf_ms"])
    modes = {(r["target"], r["mode"]) for r in results["runs"]}
    assert ("unirank/cpu-realtime", "open") in modes and ("unirank/cpu-realtime", "closed") in modes
    served = [r for r in results["runs"] if r["target"] == "unirank/cpu-realtime"]
    assert all(r["torch_imported"] is False for r in served)
    assert results["floors"]["compute"]["onnxruntime"]["mixed"]["p50_us"] > 0
    startup = results["startup"]["cpu-realtime"]
    assert startup["samples_s"] and startup["libtorch_mapped"] is False
    assert len(results["load"]["before"]) == 3
    assert {v["target"] for v in results["verdicts"]} >= {"cpu-realtime never imports torch"}
    # The full pipeline (retrieval on) against the floor sent the candidates UniRank scores.
    full = {(r["target"], r["workload"], r["concurrency"]) for r in results["runs"]}
    for c in (1, 32):
        assert ("unirank/cpu-realtime", "retrieval/mixed", c) in full
        assert ("floor/aio-ort", "retrieved/mixed", c) in full
    assert results["workloads"]["retrieval/mixed"]["candidates_max"] == 0
    assert 0 < results["workloads"]["retrieved/mixed"]["candidates_mean"] <= 300
    pipeline_verdicts = [v for v in results["verdicts"] if "full pipeline" in v["target"]]
    assert len(pipeline_verdicts) == 2 and all(v["measured"] > 0 for v in pipeline_verdicts)
    assert (out / "latency-cdf.png").stat().st_size > 0 and (out / "throughput.png").stat().st_size > 0
    assert "bench:results:begin" in (out / "benchmarks.md").read_text()
