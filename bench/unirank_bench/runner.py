"""One benchmark run: build the workloads, measure the floors, every target under load, the peer."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from unirank.server.config import load_profile
from unirank.server.profile_io import derive_profile, write_profile
from unirank.training.progress import progress_bar
from unirank_bench import fullpipeline, mlserver_peer, procstats, servers, v2
from unirank_bench.fullpipeline import RETRIEVAL_PREFIX, SCORED_PREFIX
from unirank_bench.loadworkers import Job, LoadGenerator, RunResult
from unirank_bench.report import CDF_POINTS
from unirank_bench.servers import PROFILES, REPO, SOURCE, UNIRANK_METHOD, WORKERS_TARGET, ServerProcess
from unirank_bench.workload import MIXED, USE_CASES, Payloads, build_payloads, build_workloads

FULL_PIPELINE_CONCURRENCY = (1, 32)
"""Closed-loop concurrencies of the full-pipeline runs (issue #18's targets)."""


@dataclass
class Settings:
    artifact: Path
    out_dir: Path
    markdown: Path | None
    work_dir: Path
    profiles: list[str]
    concurrency: list[int]
    open_rate: float
    warmup_s: float
    duration_s: float
    client_procs: int
    channels: int
    """Connections per load-generator process (``--workers`` servers need several)."""
    requests_per_use_case: int
    seed: int
    mlserver: bool
    retrieval_runs: bool
    workers_runs: bool
    """Also serve cpu-realtime with ``--workers 2`` (mixed, the concurrencies of 8 and up)."""
    compute_seconds: float
    compute_torch: bool
    startup_repeats: int
    quick: bool
    wait_idle: bool = False
    max_load: float = 0.5
    max_wait_s: float = 900.0
    use_cases: list[str] = field(default_factory=lambda: [*USE_CASES, MIXED])
    targets: list[str] | None = None
    """Only these targets (``transport``, ``aio-ort``, ``mlserver``, profile names); None: all."""
    rounds: int = 1
    """Run every target this many times, in turn; each run reports the median round."""


@dataclass
class Target:
    """Something the load generator drives."""

    name: str
    """``unirank/<profile>``, ``floor/transport``, ``floor/aio-ort`` or ``mlserver``."""
    kind: str
    method: str
    parser: str
    payload_kind: str
    workloads: list[str]
    start: Callable[[], ServerProcess]
    profile: str = ""
    probe: bool = False
    extra_closed: list[tuple[str, int]] = field(default_factory=list)
    """(workload, concurrency) runs beyond the matrix (retrieval-mode runs)."""
    concurrency: list[int] | None = None
    """Closed-loop concurrencies of this target (None: the run's)."""


class Step(NamedTuple):
    """One measurement of a target: a workload under a closed loop of ``concurrency`` callers or
    an open loop at ``rate`` requests/s."""

    workload: str
    mode: str
    concurrency: int
    rate: float


@dataclass(frozen=True)
class Window:
    """What was read around a measurement window: counters at its start and end, then the
    server's memory and the machine's load."""

    first: dict[str, Any]
    last: dict[str, Any]
    memory: dict[int, procstats.Memory]
    load: tuple[float, float, float]


def log(message: str) -> None:
    print(f"bench: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def latency_summary(latencies_ns: np.ndarray) -> dict[str, Any]:
    if not len(latencies_ns):
        return {
            "p50_ms": None,
            "p90_ms": None,
            "p99_ms": None,
            "p999_ms": None,
            "mean_ms": None,
            "max_ms": None,
        }
    ms = latencies_ns / 1e6
    p50, p90, p99, p999 = np.percentile(ms, [50, 90, 99, 99.9])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "p999_ms": float(p999),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    if SOURCE != REPO:  # a snapshot of one commit: nothing uncommitted can be in it
        sha = (SOURCE / ".complete").read_text().strip() if (SOURCE / ".complete").exists() else SOURCE.name
        return {"commit": sha, "source": str(SOURCE), "dirty_paths_outside_bench": []}
    dirty = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {
        "commit": git("rev-parse", "HEAD"),
        "source": "working tree",
        "dirty_paths_outside_bench": sorted(
            p for p in dirty if not p.startswith(("bench/", "tests/bench/", "docs/bench"))
        ),
    }


def gpu_batched_without_batching(source: Path, dest: Path) -> Path:
    """The gpu-batched profile with ``batching.enabled = false`` and nothing else changed."""
    profile = load_profile(source)
    if not profile.model.batching.enabled:
        raise RuntimeError(f"{source}: batching is already off")
    variant = derive_profile(profile, {"model": {"batching": {"enabled": False}}}, name="gpu-batched-nobatch")
    return write_profile(variant, dest)


class Bench:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.work = settings.work_dir
        self.work.mkdir(parents=True, exist_ok=True)
        self.gen_dir = self.work / "gen"
        self.results: dict[str, Any] = {
            "schema": 1,
            "started_unix_s": time.time(),
            "quick": settings.quick,
            "host": self._host(),
            "git": git_state(),
            "settings": {
                "artifact": str(settings.artifact),
                "profiles": settings.profiles,
                "concurrency": settings.concurrency,
                "open_rate_rps": settings.open_rate,
                "warmup_s": settings.warmup_s,
                "duration_s": settings.duration_s,
                "client_processes": settings.client_procs,
                "client_channels_per_process": settings.channels,
                "requests_per_use_case": settings.requests_per_use_case,
                "seed": settings.seed,
                "rounds": settings.rounds,
                "targets": settings.targets,
            },
            "load": {"before": None, "waited_s": 0.0},
            "runs": [],
            "floors": {},
            "startup": {},
            "mlserver": {"status": "not run"},
            "failures": [],
            "targets": {},
        }

    # -- setup -----------------------------------------------------------------------------

    @staticmethod
    def _host() -> dict[str, Any]:
        import grpc
        import onnxruntime

        return {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "onnxruntime": onnxruntime.__version__,
        }

    def wait_for_quiet_machine(self) -> None:
        before = procstats.loadavg()
        waited = 0.0
        if self.s.wait_idle:
            while before[0] > self.s.max_load and waited < self.s.max_wait_s:
                log(f"load average {before[0]:.2f} > {self.s.max_load}: waiting (waited {waited:.0f} s)")
                time.sleep(20)
                waited += 20
                before = procstats.loadavg()
        self.results["load"] = {"before": list(before), "waited_s": waited}
        log(f"load average before the run: {before}")

    def prepare(self) -> Payloads:
        from unirank.artifact import load_artifact

        artifact = load_artifact(self.s.artifact)
        self.results["artifact"] = {
            "model_version": artifact.model_version,
            "items": artifact.catalog.n_items,
            "users": len(artifact.catalog.users) - 1,
            "model_config": artifact.manifest.get("model_config", {}),
        }
        v2_module = v2.load(self.gen_dir)
        workloads = build_workloads(artifact, self.s.requests_per_use_case, self.s.seed)
        if self.s.retrieval_runs:
            plain = build_workloads(
                artifact, self.s.requests_per_use_case, self.s.seed + 1, caller_candidates=False
            )
            plain = {k: v for k, v in plain.items() if k in self.s.use_cases}
            workloads.update({RETRIEVAL_PREFIX + k: v for k, v in plain.items()})
            log("full pipeline: the candidates cpu-realtime scores per request, for the floor")
            scored = fullpipeline.scored_workloads(
                self.s.artifact, PROFILES / f"{fullpipeline.PROFILE}.toml", plain
            )
            workloads.update({SCORED_PREFIX + k: v for k, v in scored.items()})
        payloads = build_payloads(artifact, workloads, v2_module)
        self.payload_file = self.work / "payloads.pickle"
        payloads.save(self.payload_file)
        self.response_file = self.work / "response.bin"
        self.response_file.write_bytes(payloads.response)
        self.results["workloads"] = {
            name: {
                "requests": len(reqs),
                "candidates_min": int(min(payloads.candidate_counts[name])),
                "candidates_max": int(max(payloads.candidate_counts[name])),
                "candidates_mean": float(np.mean(payloads.candidate_counts[name])),
                "request_bytes_mean": float(np.mean([len(b) for b in payloads.unirank[name]])),
                "v2_request_bytes_mean": (
                    float(np.mean([len(b) for b in payloads.v2[name]])) if name in payloads.v2 else None
                ),
            }
            for name, reqs in payloads.requests.items()
        }
        self.results["workloads"]["_response_bytes"] = len(payloads.response)
        return payloads

    def compute_floor(self) -> None:
        log("compute floor: in-process scoring, no server")
        argv = [
            sys.executable, "-m", "unirank_bench.floors", "compute",
            "--artifact", str(self.s.artifact), "--payloads", str(self.payload_file),
            "--seconds", str(self.s.compute_seconds),
        ]  # fmt: skip
        env = servers.bench_env({} if self.s.compute_torch else {"UNIRANK_BENCH_NO_TORCH": "1"})
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"compute floor failed:\n{done.stderr[-3000:]}")
        self.results["floors"]["compute"] = json.loads(done.stdout.strip().splitlines()[-1])

    def startup(self) -> None:
        for profile in self.s.profiles:
            repeats = self.s.startup_repeats if profile == "cpu-realtime" else 1
            samples = []
            for i in range(repeats):
                log(f"start-up: {profile} #{i + 1}")
                try:
                    samples.append(
                        servers.measure_startup(
                            PROFILES / f"{profile}.toml",
                            self.s.artifact,
                            free_port(),
                            self.work / "logs" / f"startup-{profile}-{i}.log",
                        )
                    )
                except RuntimeError as exc:
                    self.results["failures"].append({"target": f"startup/{profile}", "error": str(exc)})
                    log(f"start-up of {profile} failed: {exc}")
                    break
            if not samples:
                continue
            times = [x["startup_to_serving_s"] for x in samples]
            self.results["startup"][profile] = {
                "samples_s": times,
                "median_s": float(np.median(times)),
                "rss_mb": max(x["rss_mb"] for x in samples),
                "libtorch_mapped": any(x["libtorch_mapped"] for x in samples),
                "onnxruntime_mapped": any(x["onnxruntime_mapped"] for x in samples),
            }

    # -- targets ---------------------------------------------------------------------------

    def targets(self, payloads: Payloads) -> list[Target]:
        caller_workloads = [w for w in self.s.use_cases if w in payloads.unirank]
        out: list[Target] = [
            Target(
                "floor/transport", "floor", UNIRANK_METHOD, "none", "unirank", caller_workloads,
                lambda: servers.start_floor(
                    "echo", ["--response", str(self.response_file)], self.work / "logs" / "echo.log"
                ),
            ),
            Target(
                "floor/aio-ort", "floor", UNIRANK_METHOD, "unirank", "unirank", caller_workloads,
                lambda: servers.start_floor(
                    "aio-ort", ["--artifact", str(self.s.artifact)], self.work / "logs" / "aio-ort.log"
                ),
                extra_closed=self._full_pipeline_runs(payloads, SCORED_PREFIX, FULL_PIPELINE_CONCURRENCY),
            ),
        ]  # fmt: skip
        for profile in self.s.profiles:
            profile_path = PROFILES / f"{profile}.toml"
            served = list(load_profile(profile_path).tasks)
            workloads = [w for w in caller_workloads if w in served or (w == MIXED and len(served) > 1)]
            extra = []
            if profile == fullpipeline.PROFILE:
                extra = self._full_pipeline_runs(payloads, RETRIEVAL_PREFIX, FULL_PIPELINE_CONCURRENCY)
            variants = [(profile, profile_path)]
            if profile == "gpu-batched":
                nobatch = gpu_batched_without_batching(profile_path, self.work / "gpu-batched-nobatch.toml")
                variants.append(("gpu-batched-nobatch", nobatch))
            for name, path in variants:
                out.append(
                    Target(
                        f"unirank/{name}", "unirank", UNIRANK_METHOD, "unirank", "unirank", workloads,
                        lambda path=path, name=name: servers.start_unirank(  # type: ignore[misc]
                            path, self.s.artifact, self.work / "logs" / f"unirank-{name}.log"
                        ),
                        profile=name, probe=True, extra_closed=extra if name == "cpu-realtime" else [],
                    )
                )  # fmt: skip
            if self.s.workers_runs and profile == "cpu-realtime" and MIXED in workloads:
                out.append(
                    Target(
                        f"unirank/{WORKERS_TARGET}", "unirank", UNIRANK_METHOD, "unirank", "unirank", [MIXED],
                        lambda path=profile_path: servers.start_unirank(  # type: ignore[misc]
                            path, self.s.artifact, self.work / "logs" / f"unirank-{WORKERS_TARGET}.log",
                            workers=2,
                        ),
                        profile=profile, concurrency=[c for c in self.s.concurrency if c >= 8],
                    )
                )  # fmt: skip
        if self.s.mlserver:
            v2_workloads = [w for w in caller_workloads if w in payloads.v2]
            out.append(
                Target(
                    "mlserver", "peer", v2.MODEL_INFER, "v2", "v2", v2_workloads, self._start_mlserver,
                    extra_closed=[
                        run for run in self._full_pipeline_runs(payloads, SCORED_PREFIX, (32,))
                        if run[0] in payloads.v2
                    ],
                )
            )  # fmt: skip
        return out

    def _full_pipeline_runs(
        self, payloads: Payloads, prefix: str, concurrency: tuple[int, ...]
    ) -> list[tuple[str, int]]:
        """(workload, C) of the full-pipeline comparison for one side: ``retrieval/…`` for UniRank,
        ``retrieved/…`` (the same requests with the candidates UniRank scores) for the floor."""
        if not self.s.retrieval_runs:
            return []
        return [
            (prefix + w, c) for w in self.s.use_cases if prefix + w in payloads.unirank for c in concurrency
        ]

    def _start_mlserver(self) -> ServerProcess:
        venv = REPO / "build" / "mlserver-venv"
        versions = mlserver_peer.ensure_venv(venv, log=self.work / "logs" / "mlserver-install.log")
        grpc_port, http_port = free_port(), free_port()
        repository = mlserver_peer.write_repository(
            self.work / "mlserver-repo", self.s.artifact / "model.onnx", grpc_port, http_port
        )
        server = mlserver_peer.start(
            venv, repository, grpc_port, self.work / "logs" / "mlserver.log", v2.load(self.gen_dir)
        )
        self.results["mlserver"] = {
            "status": "ran",
            "versions": versions,
            "settings": json.loads((repository / "settings.json").read_text()),
            "startup_s": server.startup_s,
        }
        return server

    # -- measuring -------------------------------------------------------------------------

    def run_target(self, target: Target, loadgen: LoadGenerator) -> None:
        log(f"starting {target.name}")
        try:
            server = target.start()
        except mlserver_peer.MLServerUnavailable as exc:
            self.results["mlserver"] = {"status": "unavailable", "error": str(exc)}
            log(f"MLServer unavailable: {exc}")
            return
        except RuntimeError as exc:  # recorded; the other targets still run
            self.results["failures"].append({"target": target.name, "error": str(exc)})
            log(f"{target.name} did not start: {exc}")
            return
        try:
            log(f"{target.name} on {server.address} (pid {server.pid}, ready in {server.startup_s:.2f} s)")
            about: dict[str, Any] = {"address": server.address, "ready_s": server.startup_s}
            if target.probe:  # the first call finds the backend: keep it out of the runs
                about["imports_unirank_server_from"] = server.probe(timeout_s=30)["unirank_server_from"]
            self.results["targets"][target.name] = about
            plan: list[Step] = []
            for workload in target.workloads:
                plan += [Step(workload, "closed", c, 0.0) for c in target.concurrency or self.s.concurrency]
            open_workload = MIXED if MIXED in target.workloads else target.workloads[0]
            if self.s.open_rate > 0:
                plan.append(Step(open_workload, "open", 0, self.s.open_rate))
            plan += [Step(w, "closed", c, 0.0) for w, c in target.extra_closed]
            for step in plan:
                workload, mode, concurrency, rate = step
                record = self.measure(target, server, loadgen, step)
                self.results["runs"].append(record)
                lat = record["latency_ms"]
                log(
                    f"  {target.name:<28} {workload:<24} "
                    + (f"C={concurrency:<5}" if mode == "closed" else f"{rate:.0f}/s ")
                    + f" {record['throughput_rps']:8.0f} rps  p50 {lat['p50_ms'] or 0:7.2f}  "
                    + f"p99 {lat['p99_ms'] or 0:7.2f} ms  "
                    f"cpu/req {record['server_cpu_ms_per_request'] or 0:.3f} ms  "
                    f"foreign {record['foreign_cpu_cores']:.2f} cores"
                    + (f"  batch {record['batch_size_mean']:.1f}" if record["batch_size_mean"] else "")
                    + (f"  errors {record['errors']}" if record["errors"] else "")
                )
        finally:
            code = server.stop()
            log(f"stopped {target.name} (exit {code})")

    def measure(
        self, target: Target, server: ServerProcess, loadgen: LoadGenerator, step: Step
    ) -> dict[str, Any]:
        workload, mode, concurrency, rate = step
        start_at = time.monotonic() + 0.2
        job = Job(
            address=server.address,
            method=target.method,
            parser=target.parser,
            payload_file=str(self.payload_file),
            payload_kind=target.payload_kind,
            workload=workload,
            mode=mode,
            concurrency=max(concurrency, 1),
            rate=rate,
            start_at=start_at,
            measure_from=start_at + self.s.warmup_s,
            measure_to=start_at + self.s.warmup_s + self.s.duration_s,
            gen_dir=str(self.gen_dir),
            nonce=f"bench{len(self.results['runs'])}",
            channels=self.s.channels,
        )
        loadgen.start(job)
        server_pids = server.pids()
        own = [os.getpid(), *loadgen.pids]

        def sample() -> dict[str, Any]:
            return {
                "server_cpu": procstats.tree_cpu_seconds(server_pids),
                "own_cpu": procstats.tree_cpu_seconds(own),
                "machine": procstats.machine_busy_seconds()[0],
                "loadgen_cpu": procstats.tree_cpu_seconds(loadgen.pids),
                "probe": server.probe() if target.probe else None,
            }

        _sleep_until(job.measure_from)
        first = sample()
        _sleep_until(job.measure_to)
        last = sample()
        window = Window(first, last, {pid: procstats.memory(pid) for pid in server_pids}, procstats.loadavg())
        return self._record(target, step, loadgen.collect(), window)

    def _record(self, target: Target, step: Step, result: RunResult, window: Window) -> dict[str, Any]:
        workload, mode, concurrency, rate = step
        first, last, memory, load = window.first, window.last, window.memory, window.load
        duration = self.s.duration_s
        n = result.completed
        server_cpu = last["server_cpu"] - first["server_cpu"]
        loadgen_cpu = last["loadgen_cpu"] - first["loadgen_cpu"]
        own_cpu = last["own_cpu"] - first["own_cpu"]
        foreign = (last["machine"] - first["machine"]) - server_cpu - own_cpu
        batch = None
        if first["probe"] is not None and last["probe"] is not None:
            batches = last["probe"]["batches"] - first["probe"]["batches"]
            batched = last["probe"]["batched_requests"] - first["probe"]["batched_requests"]
            batch = batched / batches if batches else 1.0  # no batcher: one request per model call
        elif target.kind != "unirank":
            batch = 1.0
        latencies = np.sort(result.latencies_ns)
        cdf = (np.quantile(latencies, CDF_POINTS) / 1e6).round(4).tolist() if len(latencies) else []
        return {
            "target": target.name,
            "kind": target.kind,
            "profile": target.profile,
            "workload": workload,
            "mode": mode,
            "concurrency": concurrency if mode == "closed" else None,
            "rate_rps": rate if mode == "open" else None,
            "duration_s": duration,
            "requests": n,
            "errors": result.errors,
            "dropped": result.dropped,
            "bad_answers": result.bad_answers,
            "throughput_rps": n / duration,
            "latency_ms": latency_summary(latencies),
            "server_cpu_cores": server_cpu / duration,
            "server_cpu_ms_per_request": server_cpu / n * 1e3 if n else None,
            "client_cpu_ms_per_request": loadgen_cpu / n * 1e3 if n else None,
            "server_rss_mb": {str(pid): round(m.rss_mb, 1) for pid, m in memory.items()},
            "server_rss_mb_main": round(memory[min(memory)].rss_mb, 1) if memory else None,
            "server_peak_rss_mb_main": round(memory[min(memory)].peak_rss_mb, 1) if memory else None,
            "batch_size_mean": batch,
            "cache_hit_fraction": result.cache_hits / n if n and target.parser == "unirank" else None,
            "fallback_fraction": result.fallbacks / n if n and target.parser == "unirank" else None,
            "torch_imported": last["probe"]["torch_imported"] if last["probe"] else None,
            "foreign_cpu_cores": foreign / duration,
            "loadavg_1m": load[0],
            "cdf_ms": cdf,
        }

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.wait_for_quiet_machine()
        payloads = self.prepare()
        self.compute_floor()
        self.startup()
        loadgen = LoadGenerator(self.s.client_procs)
        targets = self.targets(payloads)
        if self.s.targets is not None:
            targets = [t for t in targets if t.name.rsplit("/", 1)[-1] in self.s.targets]
        try:
            with progress_bar(self.s.rounds * len(targets), "bench", unit="target") as bar:
                for round_index in range(self.s.rounds):
                    if self.s.rounds > 1:
                        log(f"round {round_index + 1} of {self.s.rounds}")
                    for target in targets:
                        bar.set_postfix_str(target.name)
                        self.run_target(target, loadgen)
                        bar.update(1)
        finally:
            loadgen.close()
        if self.s.rounds > 1:
            self.results["runs_all_rounds"] = self.results["runs"]
            self.results["runs"] = median_rounds(self.results["runs"])
        self.results["load"]["after"] = list(procstats.loadavg())
        self.results["finished_unix_s"] = time.time()
        return self.results


def median_rounds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (target, workload, load): the round with the median throughput (closed
    loop) or median p50 (open loop), whole, so its numbers stay consistent with each other."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        key = (run["target"], run["workload"], run["mode"], run["concurrency"], run["rate_rps"])
        groups.setdefault(key, []).append(run)
    out = []
    for group in groups.values():
        if group[0]["mode"] == "closed":
            ordered = sorted(group, key=lambda r: r["throughput_rps"])
        else:
            ordered = sorted(group, key=lambda r: r["latency_ms"]["p50_ms"] or 0.0)
        chosen = dict(ordered[(len(ordered) - 1) // 2])
        chosen["rounds"] = len(group)
        chosen["throughput_rps_rounds"] = [r["throughput_rps"] for r in group]
        chosen["p50_ms_rounds"] = [r["latency_ms"]["p50_ms"] for r in group]
        chosen["foreign_cpu_cores_rounds"] = [r["foreign_cpu_cores"] for r in group]
        out.append(chosen)
    return out


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)
