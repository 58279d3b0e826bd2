"""The Open Inference Protocol (V2) messages, compiled from proto/ on first use into build/."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

PROTO_DIR = Path(__file__).resolve().parent / "proto"
PROTO = "open_inference_v2.proto"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_READY = "/inference.GRPCInferenceService/ModelReady"


def load(gen_dir: Path) -> ModuleType:
    """Import ``open_inference_v2_pb2``, generating it under ``gen_dir`` when it is missing or stale."""
    target = gen_dir / "open_inference_v2_pb2.py"
    source = PROTO_DIR / PROTO
    if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
        from grpc_tools import protoc

        gen_dir.mkdir(parents=True, exist_ok=True)
        code = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={gen_dir}", str(source)])
        if code != 0:
            raise RuntimeError(f"protoc failed ({code}) on {source}")
    if str(gen_dir) not in sys.path:
        sys.path.insert(0, str(gen_dir))
    return importlib.import_module("open_inference_v2_pb2")
