"""Starting, watching and stopping the processes under test (UniRank, the floors, MLServer)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from unirank_bench import procstats

BENCH_DIR = Path(__file__).resolve().parents[1]
REPO = BENCH_DIR.parent
SOURCE_ENV = "UNIRANK_BENCH_SOURCE"
SOURCE = Path(os.environ.get(SOURCE_ENV) or REPO)
"""The UniRank source under test: the working tree, or a snapshot of a commit (``--commit``)."""
PROFILES = SOURCE / "profiles"
UNIRANK_METHOD = "/unirank.v1.RecommenderService/Recommend"
WORKERS_TARGET = "cpu-realtime-w2"
"""cpu-realtime served by ``unirank serve --workers 2`` (the scale-out comparison)."""


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """A process under test: its address once ready, and a line reader on its stdout."""

    name: str
    proc: subprocess.Popen[str]
    log_path: Path
    address: str = ""
    startup_s: float = 0.0
    _lines: queue.Queue[str] = field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        """The process and its children (MLServer may fork workers)."""
        return [self.pid, *procstats.children(self.pid)]

    def follow(self) -> None:
        assert self.proc.stdout is not None
        stdout: IO[str] = self.proc.stdout

        def pump() -> None:
            for line in stdout:
                self._lines.put(line.rstrip("\n"))

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()

    def wait_line(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                break
            try:
                line = self._lines.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line
        raise RuntimeError(
            f"{self.name}: no {prefix!r} line within {timeout_s:.0f} s (exit code {self.proc.poll()}); "
            f"log {self.log_path}:\n{tail(self.log_path)}"
        )

    def probe(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Ask a ``unirank_bench.probe`` server for its counters."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        line = self.wait_line("BENCH-PROBE ", timeout_s)
        result: dict[str, Any] = json.loads(line.removeprefix("BENCH-PROBE "))
        return result

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def spawn(
    name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path = REPO
) -> ServerProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env if env is not None else bench_env(),
        cwd=cwd,
    )
    server = ServerProcess(name, proc, log_path)
    server.follow()
    return server


def start_unirank(
    profile: Path, artifact: Path, log_path: Path, python: str = sys.executable, workers: int = 1
) -> ServerProcess:
    """The real serve command line, through the probe (which adds only the stats side channel).

    With ``workers`` > 1 it is ``unirank serve --workers N``: ready once every worker serves.
    """
    started = time.monotonic()
    server = spawn(
        f"unirank[{profile.stem}]",
        [
            python,
            "-m",
            "unirank_bench.probe",
            "--profile",
            str(profile),
            "--artifact",
            str(artifact),
            "--port",
            "0",
            *(["--workers", str(workers)] if workers > 1 else []),
        ],
        log_path,
    )
    for _ in range(workers):
        line = server.wait_line("unirank: serving ", 120)
    server.address = line.rsplit(" on ", 1)[1].strip()
    server.startup_s = time.monotonic() - started
    return server


def start_floor(kind: str, args: list[str], log_path: Path, python: str = sys.executable) -> ServerProcess:
    started = time.monotonic()
    server = spawn(
        f"floor[{kind}]", [python, "-m", "unirank_bench.floors", kind, *args, "--port", "0"], log_path
    )
    server.address = server.wait_line("READY ", 60).split()[1]
    server.startup_s = time.monotonic() - started
    return server


def wait_serving(address: str, timeout_s: float, proc: subprocess.Popen[str] | None = None) -> bool:
    """Poll the standard health service until SERVING (False on timeout or once ``proc`` exits)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and (proc is None or proc.poll() is None):
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.005)
    return False


def measure_startup(
    unirank_bin: Path, profile: Path, artifact: Path, port: int, log_path: Path
) -> dict[str, Any]:
    """Time ``unirank serve`` from exec to health SERVING; then its RSS and whether torch is mapped."""
    started = time.monotonic()
    server = spawn(
        f"startup[{profile.stem}]",
        [
            str(unirank_bin),
            "serve",
            "--profile",
            str(profile),
            "--artifact",
            str(artifact),
            "--port",
            str(port),
        ],
        log_path,
    )
    try:
        serving = wait_serving(f"127.0.0.1:{port}", 60, server.proc)
        elapsed = time.monotonic() - started
        if not serving:
            raise RuntimeError(f"{profile.stem} never reported SERVING; log:\n{tail(log_path)}")
        time.sleep(0.3)
        memory = procstats.memory(server.pid)
        return {
            "startup_to_serving_s": elapsed,
            "rss_mb": memory.rss_mb,
            "peak_rss_mb": memory.peak_rss_mb,
            "libtorch_mapped": procstats.maps_mention(server.pid, "libtorch"),
            "onnxruntime_mapped": procstats.maps_mention(server.pid, "onnxruntime"),
        }
    finally:
        server.stop()
