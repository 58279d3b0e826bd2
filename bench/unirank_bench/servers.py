"""The one server-process harness: starting, watching and stopping the processes under test
(``unirank serve``, the floors, MLServer), for ``make bench``, ``make stress`` and the hardening
tests alike. A process's every output line is kept; its address comes from its ready line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
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
UNIRANK_BIN = Path(sys.executable).with_name("unirank")
"""The ``unirank`` command of this interpreter's environment."""
SERVING_LINE = "unirank: serving "
"""How ``unirank serve`` says it is ready: ``unirank: serving PROFILE on ADDRESS``."""
WORKERS_TARGET = "cpu-realtime-w2"
"""cpu-realtime served by ``unirank serve --workers 2`` (the scale-out comparison)."""


def pin_load_generator() -> set[int] | None:
    """The server gets CPU 0, this process (the load generator) the others: one cannot take the
    other's core. The server's CPUs (for ``serving(cpus=...)``); None where there is only one CPU
    or affinity is not supported. The caller restores its own affinity afterwards."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if len(cpus) < 2:
        return None
    server = {min(cpus)}
    os.sched_setaffinity(0, cpus - server)
    return server


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
    log_path: Path | None
    """Where its stderr goes; None: into stdout, so :attr:`output` holds both."""
    address: str = ""
    startup_s: float = 0.0
    output: list[str] = field(default_factory=list)
    """Every line it wrote to stdout (and stderr, without a log file), newline kept."""
    _lines: queue.Queue[str] = field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident memory now (Linux)."""
        return round(procstats.memory(self.pid).rss_mb * 1024)

    def peak_rss_kib(self) -> int:
        """The high-water mark of resident memory (Linux)."""
        return round(procstats.memory(self.pid).peak_rss_mb * 1024)

    def pids(self) -> list[int]:
        """The process and its children (MLServer may fork workers)."""
        return [self.pid, *procstats.children(self.pid)]

    def follow(self) -> None:
        assert self.proc.stdout is not None
        stdout: IO[str] = self.proc.stdout

        def pump() -> None:
            for line in stdout:
                self.output.append(line)
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
            f"{self.name}: no {prefix!r} line within {timeout_s:.0f} s (exit code {self.proc.poll()}):\n"
            + (f"log {self.log_path}:\n{tail(self.log_path)}" if self.log_path else "".join(self.output))
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

    def kill(self) -> int:
        """SIGKILL unless it has ended; its exit code once its output is read to the end."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        return code


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def spawn(
    name: str,
    argv: list[str],
    log_path: Path | None,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    cpus: set[int] | None = None,
) -> ServerProcess:
    """Start ``argv``, its stdout read line by line; stderr to ``log_path`` (None: into stdout).

    ``cpus`` pins it (Linux), so a load generator pinned elsewhere cannot take its cores.
    """
    stderr: IO[str] | int = subprocess.STDOUT
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stderr = log_path.open("w")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        errors="replace",
        env=env if env is not None else bench_env(),
        cwd=cwd,
        preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
    )
    server = ServerProcess(name, proc, log_path)
    server.follow()
    return server


def serve_argv(profile: Path, artifact: Path, *extra: str, port: int = 0, probe: bool = False) -> list[str]:
    """The ``unirank serve`` command line; through :mod:`unirank_bench.probe` (the same command
    with a stats side channel) when ``probe``."""
    command = [sys.executable, "-m", "unirank_bench.probe"] if probe else [str(UNIRANK_BIN), "serve"]
    return [*command, "--profile", str(profile), "--artifact", str(artifact), "--port", str(port), *extra]


def start_serve(
    profile: Path,
    artifact: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
    log_path: Path | None = None,
    probe: bool = False,
    workers: int = 1,
    timeout_s: float = 60.0,
) -> ServerProcess:
    """``unirank serve`` on a free port, returned once every worker says it serves."""
    started = time.monotonic()
    argv = serve_argv(profile, artifact, *extra, probe=probe)
    server = spawn(f"unirank[{profile.stem}]", argv, log_path, env=bench_env(env), cpus=cpus)
    try:
        for _ in range(workers):
            line = server.wait_line(SERVING_LINE, timeout_s)
    except RuntimeError:
        server.kill()
        raise
    server.address = line.rsplit(" on ", 1)[1].strip()
    server.startup_s = time.monotonic() - started
    return server


@contextlib.asynccontextmanager
async def serving(
    profile: Path,
    artifact: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> AsyncIterator[ServerProcess]:
    """``unirank serve`` on a free port, until the block ends (then SIGKILL if it still runs)."""
    server = await asyncio.to_thread(start_serve, profile, artifact, *extra, env=env, cpus=cpus)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.kill)


async def run_serve(args: Sequence[str], timeout: float = 60.0) -> tuple[int, str]:
    """Run ``unirank serve ARGS`` to its end; its exit code and everything it wrote."""
    done = await asyncio.to_thread(
        subprocess.run,
        [str(UNIRANK_BIN), "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
    )
    return done.returncode, done.stdout.decode(errors="replace")


def start_unirank(profile: Path, artifact: Path, log_path: Path, workers: int = 1) -> ServerProcess:
    """The real serve command line, through the probe (which adds only the stats side channel).

    With ``workers`` > 1 it is ``unirank serve --workers N``: ready once every worker serves.
    """
    extra = ["--workers", str(workers)] if workers > 1 else []
    return start_serve(
        profile, artifact, *extra, log_path=log_path, probe=True, workers=workers, timeout_s=120
    )


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


def measure_startup(profile: Path, artifact: Path, port: int, log_path: Path) -> dict[str, Any]:
    """Time ``unirank serve`` from exec to health SERVING; then its RSS and whether torch is mapped."""
    started = time.monotonic()
    server = spawn(f"startup[{profile.stem}]", serve_argv(profile, artifact, port=port), log_path)
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
