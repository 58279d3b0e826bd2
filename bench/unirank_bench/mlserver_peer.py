"""The peer: the same model.onnx served by MLServer (custom ONNX Runtime runtime), in its own venv.

The venv lives under build/ and is created on first use; MLServer is never a UniRank dependency.
MLServer runs in-process (``parallel_workers: 0``: one process, like one UniRank server), with
its Prometheus endpoint and debug logging off (UniRank's profiles export no metrics either).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from unirank_bench.servers import BENCH_DIR, ServerProcess, bench_env, spawn, tail

MLSERVER_SPEC = ("mlserver==1.7.0", "uvloop<0.22", "onnxruntime", "numpy")
RUNTIME_DIR = BENCH_DIR / "mlserver_runtime"


class MLServerUnavailable(RuntimeError):
    """MLServer could not be installed or started; the message carries the real error."""


def ensure_venv(venv: Path, python: str = "python3.11", log: Path | None = None) -> dict[str, str]:
    """Create ``venv`` with MLServer unless it already has it; returns the installed versions."""
    mlserver_bin = venv / "bin" / "mlserver"
    if not mlserver_bin.exists():
        if venv.exists():
            shutil.rmtree(venv)  # a half-built venv from an interrupted run
        steps = [
            [python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *MLSERVER_SPEC],
        ]
        for step in steps:
            print(f"bench: {' '.join(step)}", flush=True)
            done = subprocess.run(step, capture_output=True, text=True)
            if log is not None:
                with log.open("a") as handle:
                    handle.write(f"$ {' '.join(step)}\n{done.stdout}\n{done.stderr}\n")
            if done.returncode != 0:
                raise MLServerUnavailable(
                    f"`{' '.join(step)}` exited {done.returncode}:\n{(done.stderr or done.stdout)[-3000:]}"
                )
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    wanted = {"mlserver", "onnxruntime", "uvloop", "grpcio", "protobuf", "numpy"}
    versions = {}
    for line in freeze.splitlines():
        name, _, version = line.partition("==")
        if name.lower() in wanted:
            versions[name.lower()] = version
    return versions


def write_repository(root: Path, model_path: Path, grpc_port: int, http_port: int) -> Path:
    """A model repository with server settings and one model using the custom runtime."""
    if root.exists():
        shutil.rmtree(root)
    model_dir = root / "unirank"
    model_dir.mkdir(parents=True)
    settings: dict[str, Any] = {
        "debug": False,
        "parallel_workers": 0,
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_endpoint": None,
        "load_models_at_startup": True,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": "unirank",
        "implementation": "unirank_mlserver.UniRankOnnxRuntime",
        "parameters": {"uri": str(model_path)},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return root


def start(venv: Path, repository: Path, grpc_port: int, log_path: Path, v2: Any) -> ServerProcess:
    """Start ``mlserver start`` and wait until the model answers ModelReady."""
    import grpc

    from unirank_bench.v2 import MODEL_READY

    started = time.monotonic()
    env = bench_env({"PYTHONPATH": str(RUNTIME_DIR)})
    server = spawn(
        "mlserver", [str(venv / "bin" / "mlserver"), "start", str(repository)], log_path, env, repository
    )
    address = f"127.0.0.1:{grpc_port}"
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as channel:
        ready = channel.unary_unary(
            MODEL_READY,
            request_serializer=v2.ModelReadyRequest.SerializeToString,
            response_deserializer=v2.ModelReadyResponse.FromString,
        )
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                break
            try:
                if ready(v2.ModelReadyRequest(name="unirank"), timeout=0.5).ready:
                    server.address = address
                    server.startup_s = time.monotonic() - started
                    return server
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    server.stop()
    raise MLServerUnavailable(f"MLServer did not become ready (exit {server.proc.poll()}):\n{tail(log_path)}")
