"""The floors UniRank is measured against, each runnable as its own process.

- ``echo``: the transport floor. A bare grpc.aio server on UniRank's method path that answers
  every request with a pre-serialized response of realistic size; it parses nothing, does nothing.
- ``aio-ort``: a bare grpc.aio server that decodes the request, encodes features with the shared
  encoder, calls ONNX Runtime *inline* on the event loop and answers the top items. The least a
  Python gRPC server can do to serve this model.
- ``compute``: in-process scoring (no server, no gRPC) of the same model on the same inputs.

    python -m unirank_bench.floors echo --response FILE --port 0
    python -m unirank_bench.floors aio-ort --artifact DIR --port 0
    python -m unirank_bench.floors compute --artifact DIR --payloads FILE --seconds S
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SERVICE = "unirank.v1.RecommenderService"
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 4 << 20),
    ("grpc.max_send_message_length", 4 << 20),
]


def ort_session(model_path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


async def _serve(handlers: dict[str, Any], port: int) -> None:
    import grpc

    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"READY 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def serve_echo(response_file: Path, port: int) -> None:
    import grpc

    answer = response_file.read_bytes()

    async def recommend(request: bytes, context: Any) -> bytes:
        return answer

    handler = grpc.unary_unary_rpc_method_handler(recommend)  # bytes in, bytes out
    asyncio.run(_serve({"Recommend": handler}, port))


def serve_aio_ort(artifact_dir: Path, port: int, max_results: int = 10) -> None:
    import grpc

    from unirank.artifact import TASKS, Context, load_artifact
    from unirank.v1 import recommender_pb2 as pb

    artifact = load_artifact(artifact_dir)
    encoder = artifact.encoder()
    catalog = artifact.catalog
    session = ort_session(artifact.onnx_path)
    tasks = {spec.context_field: spec.task_type for spec in TASKS}  # the request's oneof -> task

    async def recommend(request: pb.RecommendRequest, context: Any) -> pb.RecommendResponse:
        ctx = request.context
        oneof = ctx.WhichOneof("task")
        encoded = encoder.encode(
            Context(
                task=tasks[oneof],
                user_id=ctx.user_id,
                history_item_ids=tuple(ctx.history_item_ids),
                query=ctx.search.query,
                anchor_item_id=ctx.related_items.anchor_item_id,
                category_id=ctx.category.category_id,
            )
        )
        index = catalog.items.index
        candidates = np.fromiter((index(x) for x in request.options.candidate_item_ids), dtype=np.int64)
        inputs = encoder.batch([encoded], candidates[None, :])
        (scores,) = session.run(["scores"], inputs.as_dict())  # inline: blocks the loop on purpose
        row = scores[0]
        top = np.argsort(-row, kind="stable")[:max_results]
        response = pb.RecommendResponse(
            request_id=ctx.request_id,
            task_type=int(tasks[oneof]),  # type: ignore[arg-type]
            model_version=artifact.model_version,
            profile="aio-ort-floor",
        )
        for position, score in zip(top.tolist(), row[top].tolist(), strict=True):
            item = int(candidates[position])
            response.items.add(
                item_id=catalog.items.key(item),
                score=score,
                title=catalog.titles[item],
                category_id=catalog.primary_category(item),
            )
        return response

    handler = grpc.unary_unary_rpc_method_handler(
        recommend,
        request_deserializer=pb.RecommendRequest.FromString,
        response_serializer=pb.RecommendResponse.SerializeToString,
    )
    asyncio.run(_serve({"Recommend": handler}, port))


def _percentiles_us(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples) * 1e6
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50_us": float(p50), "p90_us": float(p90), "p99_us": float(p99), "mean_us": float(values.mean())}


def _timed(fn: Any, items: list[Any], seconds: float, min_calls: int = 50) -> list[float]:
    for item in items[:20]:  # warm-up: first calls allocate
        fn(item)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline or len(samples) < min_calls:
        item = items[i % len(items)]
        i += 1
        start = time.perf_counter()
        fn(item)
        samples.append(time.perf_counter() - start)
    return samples


def compute_floor(artifact_dir: Path, payload_file: Path, seconds: float, batch_size: int) -> dict[str, Any]:
    """Per workload: ONNX Runtime (1 thread) per request, encode+score, and torch; plus one batch."""
    from unirank.artifact import ModelInputs, load_artifact
    from unirank.server.backends.stacking import concat_model_inputs
    from unirank_bench.workload import Payloads, model_inputs

    artifact = load_artifact(artifact_dir)
    payloads = Payloads.load(payload_file)
    session = ort_session(artifact.onnx_path)
    encoder = artifact.encoder()
    out: dict[str, Any] = {"onnxruntime": {}, "encode_and_onnxruntime": {}, "torch": {}, "batch": {}}
    inputs_by: dict[str, list[ModelInputs]] = {}
    for name, requests in payloads.requests.items():
        if not all(r.candidate_item_ids for r in requests):
            continue
        inputs = [model_inputs(artifact, r) for r in requests]
        inputs_by[name] = inputs
        feeds = [i.as_dict() for i in inputs]
        ort_samples = _timed(lambda f: session.run(["scores"], f), feeds, seconds)
        out["onnxruntime"][name] = _percentiles_us(ort_samples) | {
            "candidates_mean": float(np.mean([i.candidates.shape[1] for i in inputs]))
        }

        def encode_and_score(request: Any) -> None:
            encoded = encoder.encode(request.context())
            index = artifact.catalog.items.index
            ids = np.fromiter((index(x) for x in request.candidate_item_ids), dtype=np.int64)
            session.run(["scores"], encoder.batch([encoded], ids[None, :]).as_dict())

        out["encode_and_onnxruntime"][name] = _percentiles_us(_timed(encode_and_score, requests, seconds / 2))
    if os.environ.get("UNIRANK_BENCH_NO_TORCH"):
        out["torch"] = {"skipped": "UNIRANK_BENCH_NO_TORCH"}
        return out
    try:
        import torch

        from unirank.model.net import build_model_from_checkpoint
        from unirank.model.serving import serving_model
    except ImportError as exc:
        out["torch"] = {"error": f"torch unavailable: {exc}"}
        return out
    torch.set_num_threads(1)
    checkpoint = torch.load(artifact.torch_path, map_location="cpu", weights_only=True)
    model = serving_model(build_model_from_checkpoint(checkpoint))  # what the torch backend runs

    def forward(inputs: ModelInputs) -> None:
        tensors = [torch.from_numpy(a) for a in inputs.as_dict().values()]
        with torch.inference_mode():
            model(*tensors)

    for name, inputs in inputs_by.items():
        out["torch"][name] = _percentiles_us(_timed(forward, inputs, seconds / 2))
    mixed = inputs_by.get("mixed") or next(iter(inputs_by.values()))
    batch = concat_model_inputs(mixed[:batch_size])
    out["batch"] = {
        "rows": len(batch),
        "candidates": int(batch.candidates.shape[1]),
        "torch": _percentiles_us(_timed(forward, [batch], seconds / 2, min_calls=20)),
        "onnxruntime": _percentiles_us(
            _timed(lambda f: session.run(["scores"], f), [batch.as_dict()], seconds / 2, min_calls=20)
        ),
    }
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m unirank_bench.floors")
    sub = parser.add_subparsers(dest="floor", required=True)
    echo = sub.add_parser("echo")
    echo.add_argument("--response", type=Path, required=True)
    echo.add_argument("--port", type=int, default=0)
    aio = sub.add_parser("aio-ort")
    aio.add_argument("--artifact", type=Path, required=True)
    aio.add_argument("--port", type=int, default=0)
    compute = sub.add_parser("compute")
    compute.add_argument("--artifact", type=Path, required=True)
    compute.add_argument("--payloads", type=Path, required=True)
    compute.add_argument("--seconds", type=float, default=2.0)
    compute.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.floor == "echo":
        serve_echo(args.response, args.port)
    elif args.floor == "aio-ort":
        serve_aio_ort(args.artifact, args.port)
    else:
        result = compute_floor(args.artifact, args.payloads, args.seconds, args.batch_size)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
