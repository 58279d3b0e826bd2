"""How the serving graph's cost per request and its size grow with the catalogue.

The graph scatters co-engagement over a [B, items] row (up to ``CO_ENGAGEMENT_ROW_MAX`` items;
beyond, it sums it at the candidates) and the query over a [B, tokens] row, then reads them at the
candidates, and its tables hold a row per item. For each catalogue size this
builds a randomly initialised network of the demo's shape, exports its serving form to ONNX and
times ONNX Runtime on one request (200 candidates, a full history and query) on one thread: the
median of ``--calls`` calls, and the size of ``model.onnx``.

    PYTHONPATH=bench .venv/bin/python -m unirank_bench.graph_scale --sizes 3000,30000,300000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from unirank.artifact.features import INPUT_NAMES, OUTPUT_NAME
from unirank.model.config import ModelConfig
from unirank.model.net import UniRankModel
from unirank.model.serving import serving_model
from unirank.training.export import random_inputs

NEIGHBOURS, TITLE_TOKENS = 50, 8


def build(n_items: int, seed: int = 0) -> UniRankModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_tokens = max(300, n_items // 10)
    config = ModelConfig(
        n_items=n_items + 1, n_users=3001, n_tokens=n_tokens, n_categories=18, n_tasks=5, dim=32, hidden=96,
        impute_context=True,
    )  # fmt: skip
    return UniRankModel(
        config,
        title_tokens=rng.integers(0, n_tokens, size=(n_items + 1, TITLE_TOKENS)),
        item_categories=rng.integers(0, 18, size=(n_items + 1, 2)),
        item_popularity=rng.random(n_items + 1),
        item_neighbours=rng.integers(0, n_items + 1, size=(n_items + 1, NEIGHBOURS)),
        item_neighbour_weights=rng.random((n_items + 1, NEIGHBOURS)).astype(np.float32),
        item_neighbour_shares=rng.random((n_items + 1, NEIGHBOURS)).astype(np.float32),
    ).eval()


def time_graph(model: UniRankModel, calls: int, workdir: Path) -> dict[str, Any]:
    serving = serving_model(model)
    example = random_inputs(model, batch=1, history=20, query=8, candidates=200, seed=1)
    args = tuple(torch.from_numpy(example.as_dict()[name]) for name in INPUT_NAMES)
    path = workdir / "model.onnx"
    torch.onnx.export(
        serving, args, str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = example.as_dict()
    for _ in range(20):
        session.run([OUTPUT_NAME], feed)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run([OUTPUT_NAME], feed)
        times.append((time.perf_counter() - started) * 1e6)
    return {"p50_us": statistics.median(times), "model_mb": path.stat().st_size / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3000,30000,300000")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/graph_scale.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        model = build(n)
        with tempfile.TemporaryDirectory() as tmp:
            row = {"items": n, **time_graph(model, args.calls, Path(tmp))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
