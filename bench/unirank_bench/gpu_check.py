"""The GPU machine check (``bench/gpu_check.sh``, at most 5 minutes, never part of CI).

Two comparisons, on the same artifact and requests (caller-supplied candidates, the mixed stream):

1. gpu-batched (torch, dynamic batching) on CUDA against cpu-realtime (ONNX Runtime on CPU), at
   C = 1 and C = 64.
2. cpu-realtime served by ``unirank serve --workers N`` for N in 1, 2, 4, 8 against MLServer with
   ``parallel_workers`` N on the same model.onnx (where its venv, build/mlserver-venv, exists: the
   GPU machine has no network to install it), at C = 64 from several load generator processes.

``--dry-run`` runs the same steps on a machine without a GPU (gpu-batched then runs on CPU, as the
profile falls back, and the row says so) with short loads, to test the script itself; its report
goes to build/gpu-check/, never into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from unirank.artifact import load_artifact
from unirank.server.config import load_profile
from unirank.server.profile_io import derive_profile, write_profile
from unirank_bench import mlserver_peer, v2
from unirank_bench.scale import METHOD, Server, closed_loop, free_port
from unirank_bench.servers import REPO
from unirank_bench.workload import MIXED, build_payloads, build_workloads

BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"


def cuda_device() -> str:
    """``cuda (NAME)`` when torch sees a GPU, else ``cpu``."""
    import torch

    return f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"


def _one_process(args: tuple[str, list[bytes], int, float, float, str]) -> dict[str, Any]:
    return asyncio.run(closed_loop(*args))


def load(
    address: str,
    payloads: list[bytes],
    callers: int,
    seconds: float,
    warmup_s: float,
    procs: int,
    method: str,
) -> dict[str, Any]:
    """A closed loop of ``callers`` spread over ``procs`` load generator processes; summed
    throughput, the worst process's p99 and the median process's p50."""
    if procs <= 1:
        return asyncio.run(closed_loop(address, payloads, callers, seconds, warmup_s, method))
    share = [callers // procs + (i < callers % procs) for i in range(procs)]
    jobs = [(address, payloads[i::procs], n, seconds, warmup_s, method) for i, n in enumerate(share) if n]
    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_one_process, jobs))
    p50s = sorted(p["p50_ms"] for p in parts if p["p50_ms"] is not None)
    return {
        "requests_per_s": sum(p["requests_per_s"] for p in parts),
        "p50_ms": p50s[len(p50s) // 2] if p50s else None,
        "p99_ms": max((p["p99_ms"] for p in parts if p["p99_ms"] is not None), default=None),
        "answers": sum(p["answers"] for p in parts),
        "failures": sum(p["failures"] for p in parts),
        "fallbacks": sum(p["fallbacks"] for p in parts),
    }


def relaxed(name: str, work: Path) -> Path:
    """A shipped profile with generous timeouts, no caches and room to queue (what is timed is the
    model path, not a fallback or a refusal)."""
    base = load_profile(REPO / "profiles" / f"{name}.toml")
    tasks = {task: {"timeout_ms": 10_000.0, "cache": {"enabled": False}} for task in base.tasks}
    server = {"max_queued_rpcs": 10_000, "max_queue_wait_ms": 0, "grace_period_s": 0.5}
    return write_profile(derive_profile(base, {"tasks": tasks, "server": server}), work / f"{name}.toml")


def run(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    artifact = load_artifact(args.artifact)
    v2_module = v2.load(work / "gen")
    payloads = build_payloads(artifact, build_workloads(artifact, args.requests, args.seed), v2_module)
    unirank, infer = payloads.unirank[MIXED], payloads.v2[MIXED]
    result: dict[str, Any] = {"device": cuda_device(), "dry_run": args.dry_run, "backends": [], "workers": []}
    print(f"gpu-check: device {result['device']}", flush=True)

    for name in ("gpu-batched", "cpu-realtime"):
        server = Server(relaxed(name, work), args.artifact, work / f"{name}.log")
        try:
            for callers in (1, 64):
                row = load(
                    server.address, unirank, callers, args.seconds, args.warmup, args.client_procs, METHOD
                )
                row = {"profile": name, "concurrency": callers, **row}
                result["backends"].append(row)
                print(
                    f"  {name} C={callers}: {row['requests_per_s']:.0f}/s p50 {row['p50_ms']:.2f} ms",
                    flush=True,
                )
        finally:
            server.stop()

    venv = REPO / "build" / "mlserver-venv"
    has_mlserver = (venv / "bin" / "mlserver").exists()
    result["mlserver"] = (
        "ran" if has_mlserver else f"skipped: no MLServer venv at {venv} (make bench builds it)"
    )
    profile = relaxed("cpu-realtime", work)
    for workers in args.workers:
        extra = ["--workers", str(workers)] if workers > 1 else []
        server = Server(profile, args.artifact, work / f"workers-{workers}.log", extra)
        time.sleep(1.0)  # every worker up, not only the first to answer health
        try:
            row = load(server.address, unirank, 64, args.seconds, args.warmup, args.client_procs, METHOD)
        finally:
            server.stop()
        entry: dict[str, Any] = {"workers": workers, "unirank": row}
        if has_mlserver:
            entry["mlserver"] = _mlserver(venv, workers, infer, args, v2_module)
        result["workers"].append(entry)
        print(f"  --workers {workers}: UniRank {row['requests_per_s']:.0f}/s", flush=True)
    return result


def _mlserver(venv: Path, workers: int, infer: list[bytes], args: argparse.Namespace, v2_module: Any) -> Any:
    grpc_port, http_port = free_port(), free_port()
    repository = mlserver_peer.write_repository(
        args.work / "mlserver-repo", Path(args.artifact) / "model.onnx", grpc_port, http_port
    )
    settings = json.loads((repository / "settings.json").read_text())
    settings["parallel_workers"] = 0 if workers == 1 else workers
    (repository / "settings.json").write_text(json.dumps(settings, indent=2))
    try:
        server = mlserver_peer.start(
            venv, repository, grpc_port, args.work / f"mlserver-{workers}.log", v2_module
        )
    except mlserver_peer.MLServerUnavailable as exc:
        return {"error": str(exc)[-300:]}
    try:
        return load(server.address, infer, 64, args.seconds, args.warmup, args.client_procs, v2.MODEL_INFER)
    finally:
        server.stop()


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Device: {result['device']}{' (dry run on CPU)' if result['dry_run'] else ''}.", ""]
    lines += ["| profile | C | requests/s | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- |"]
    for row in result["backends"]:
        lines.append(
            f"| {row['profile']} | {row['concurrency']} | {row['requests_per_s']:,.0f} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} |"
        )
    lines += ["", f"MLServer: {result['mlserver']}.", ""]
    lines += ["| workers | UniRank requests/s (C=64) | MLServer requests/s (C=64) |", "| --- | --- | --- |"]
    for entry in result["workers"]:
        peer = entry.get("mlserver")
        cell = "–" if peer is None else peer.get("error", f"{peer.get('requests_per_s', 0):,.0f}")
        lines.append(f"| {entry['workers']} | {entry['unirank']['requests_per_s']:,.0f} | {cell} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=REPO / "build" / "artifact")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "gpu-check")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU-only machine: test the check itself")
    parser.add_argument("--workers", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per load")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--client-procs", type=int, default=4, help="load generator processes at C=64")
    parser.add_argument("--requests", type=int, default=500, help="requests per use-case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args)
    (args.work / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.work / "gpu-check.md").write_text(text + "\n")
    if not args.dry_run:
        doc = args.doc.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        if BEGIN in doc and END in doc:
            doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
        else:
            doc = doc.rstrip("\n") + "\n\n## The GPU machine check (`bench/gpu_check.sh`)\n\n" + block + "\n"
        args.doc.write_text(doc)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
