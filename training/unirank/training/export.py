"""Write one artifact directory (ONNX + torch weights + catalogue + retrieval + metrics + manifest)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from unirank.artifact import Catalog, ModelInputs
from unirank.artifact.activity import ACTIVITY_FILE, N_TIME_FEATURES, ItemActivity
from unirank.artifact.ann import ITEM_INDEX, ItemIndex, build_item_index
from unirank.artifact.features import OUTPUT_NAME, TIME_INPUT, input_names
from unirank.artifact.store import (
    CATALOG,
    METRICS,
    MODEL_ONNX,
    MODEL_ONNX_DATA,
    MODEL_TORCH,
    RETRIEVAL,
    Retrieval,
    write_manifest,
)
from unirank.model.net import UniRankModel, model_checkpoint
from unirank.model.serving import serving_model

ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4
EXTERNAL_DATA_ABOVE_BYTES = 32 * 2**20
"""A graph larger than this keeps its large tables in ``model.onnx.data`` (ONNX external data).
protobuf cannot hold a graph over 2 GB (about 1.2 million items at the demo's shape), and ONNX
Runtime maps page-aligned external tables instead of parsing them out of the graph: at 300,000
items a session loaded in 0.17 s with 251 MB resident (mostly mapped file pages) against 14.2 s and
604 MB from one file (docs/benchmarks.md). The demo's graph (3,000 items, 6 MB) stays one file."""
EXTERNAL_TENSOR_MIN_BYTES = 4096
"""Initializers at least this large move to the external data file; small ones stay in the graph."""
EXTERNAL_DATA_ALIGNMENT = 65536
"""Offset alignment of each table in ``model.onnx.data`` (a multiple of every page size and of
Windows' allocation granularity), so ONNX Runtime can map the tables straight from the file."""

# Every axis but the per-row scalars' batch is dynamic: requests differ in history length,
# query length and candidate count, and batch size differs by profile.
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "task": {0: "batch"},
    "user": {0: "batch"},
    "history": {0: "batch", 1: "history"},
    "query_tokens": {0: "batch", 1: "query"},
    "anchor_item": {0: "batch"},
    "category": {0: "batch"},
    "candidates": {0: "batch", 1: "candidates"},
    TIME_INPUT: {0: "batch", 1: "candidates"},
    OUTPUT_NAME: {0: "batch", 1: "candidates"},
}


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model, or an artifact cannot be written."""


def random_inputs(
    model: UniRankModel, batch: int, history: int, query: int, candidates: int, seed: int
) -> ModelInputs:
    """A valid random batch (with some padding) covering every task id, for tracing and parity checks."""
    cfg = model.config
    rng = np.random.default_rng(seed)

    def ids(high: int, *shape: int) -> np.ndarray:
        values = rng.integers(1, max(high, 2), size=shape, dtype=np.int64)
        return np.where(rng.random(shape) < 0.2, 0, values).astype(np.int64)

    return ModelInputs(
        task=(np.arange(batch, dtype=np.int64) % cfg.n_tasks) + 1,
        user=ids(cfg.n_users, batch),
        history=ids(cfg.n_items, batch, history),
        query_tokens=ids(cfg.n_tokens, batch, query),
        anchor_item=ids(cfg.n_items, batch),
        category=ids(cfg.n_categories, batch),
        candidates=ids(cfg.n_items, batch, candidates),
        candidate_time=(
            rng.random((batch, candidates, N_TIME_FEATURES)).astype(np.float32) if cfg.time_features else None
        ),
    )


def torch_scores(model: UniRankModel, inputs: ModelInputs) -> np.ndarray:
    with torch.no_grad():
        names = input_names(model.config.time_features)
        return model(*(torch.from_numpy(inputs.as_dict()[name]) for name in names)).numpy()


def export_onnx(
    model: UniRankModel,
    path: Path,
    max_history: int,
    max_query_tokens: int,
    external_data_above: int | None = None,
) -> list[str]:
    """Export ``model``'s serving form (:func:`unirank.model.serving.serving_model`): its precomputed tables
    make a graph of a few dozen nodes where the training forward traces to a few hundred.

    Returns the files written next to ``path``' name: ``[path.name]``, plus :data:`MODEL_ONNX_DATA`
    when the graph passed ``external_data_above`` bytes (default :data:`EXTERNAL_DATA_ABOVE_BYTES`)
    and its tables went to external data.
    """
    model.eval()
    serving = serving_model(model)
    example = random_inputs(model, batch=2, history=max_history, query=max_query_tokens, candidates=5, seed=0)
    names = input_names(model.config.time_features)
    args = tuple(torch.from_numpy(example.as_dict()[name]) for name in names)
    # A scratch directory: past 2 GB the exporter itself writes a file per table next to the graph.
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=path.parent) as scratch:
        traced = Path(scratch) / path.name
        with warnings.catch_warnings():
            # The TorchScript exporter announces its own deprecation; the contract pins dynamo=False.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                serving,
                args,
                str(traced),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=list(names),
                output_names=[OUTPUT_NAME],
                dynamic_axes={k: v for k, v in DYNAMIC_AXES.items() if k in (*names, OUTPUT_NAME)},
                do_constant_folding=True,
            )
        exported = sum(f.stat().st_size for f in Path(scratch).iterdir())
        limit = EXTERNAL_DATA_ABOVE_BYTES if external_data_above is None else external_data_above
        if exported <= limit:
            traced.replace(path)
            return [path.name]
        graph = onnx.load(str(traced), load_external_data=True)
    write_external_data(graph, path.parent / MODEL_ONNX_DATA)
    onnx.save_model(graph, str(path))
    return [path.name, MODEL_ONNX_DATA]


def write_external_data(graph: onnx.ModelProto, data_path: Path) -> None:
    """Move ``graph``'s initializers of :data:`EXTERNAL_TENSOR_MIN_BYTES` or more into ``data_path``
    (a name beside the graph), each at an offset aligned to :data:`EXTERNAL_DATA_ALIGNMENT`."""
    with data_path.open("wb") as data:
        for tensor in graph.graph.initializer:
            raw = onnx.numpy_helper.to_array(tensor).tobytes() if not tensor.HasField("raw_data") else None
            raw = tensor.raw_data if raw is None else raw
            if len(raw) < EXTERNAL_TENSOR_MIN_BYTES:
                continue
            data.write(b"\0" * (-data.tell() % EXTERNAL_DATA_ALIGNMENT))
            offset = data.tell()
            data.write(raw)
            dims, dtype, name = list(tensor.dims), tensor.data_type, tensor.name
            tensor.Clear()
            tensor.name, tensor.data_type = name, dtype
            tensor.dims.extend(dims)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", offset), ("length", len(raw))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)


def check_onnx_parity(model: UniRankModel, path: Path, seed: int = 1) -> float:
    """Max |ONNX Runtime - torch| on random batches whose shapes differ from the traced ones.

    The reference is the training forward of ``model`` itself, not the serving form that was exported.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, (batch, history, query, candidates) in enumerate(((7, 3, 2, 31), (1, 20, 8, 200), (3, 1, 1, 1))):
        inputs = random_inputs(model, batch, history, query, candidates, seed=seed + i)
        (onnx_scores,) = session.run([OUTPUT_NAME], inputs.as_dict())
        expected = torch_scores(model, inputs)
        if onnx_scores.shape != expected.shape:
            raise ExportError(f"ONNX scores shape {onnx_scores.shape} != torch {expected.shape}")
        worst = max(worst, float(np.abs(onnx_scores - expected).max()))
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(f"ONNX Runtime and torch disagree by {worst:.3g} (> {PARITY_TOLERANCE})")
    return worst


def model_version(onnx_path: Path, now: dt.datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSS-<first 8 hex of the sha256 of the ONNX graph and its external data>`` (UTC)."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S")
    digest = hashlib.sha256()
    for path in (onnx_path, onnx_path.parent / MODEL_ONNX_DATA):
        if path.is_file():
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return f"{stamp}-{digest.hexdigest()[:8]}"


def write_artifact(
    directory: Path,
    model: UniRankModel,
    catalog: Catalog,
    retrieval: Retrieval,
    metrics: dict[str, Any],
    encoder_config: dict[str, int],
    training_data: dict[str, Any],
    extra: dict[str, Any] | None = None,
    extra_files: Sequence[str] = (),
    item_index: ItemIndex | None = None,
    activity: ItemActivity | None = None,
) -> dict[str, Any]:
    """Write every artifact file into ``directory`` (which must exist), check parity, then the manifest.

    ``item_index``: the HNSW index of ``retrieval.item_embeddings`` when the caller already built
    it (building one at a million items takes minutes); built here otherwise. ``activity``: the
    items' activity at the end of the training logs, required by a model with time features (a
    server starts its recent-popularity state from it).
    """
    if model.config.time_features and activity is None:
        raise ExportError("a model with time features needs its item activity state")
    activity_files: list[str] = []
    if model.config.time_features and activity is not None:
        activity.save(directory / ACTIVITY_FILE)
        activity_files.append(ACTIVITY_FILE)
    model.eval()
    onnx_path = directory / MODEL_ONNX
    onnx_files = export_onnx(
        model, onnx_path, encoder_config["max_history"], encoder_config["max_query_tokens"]
    )
    parity = check_onnx_parity(model, onnx_path)
    torch.save(model_checkpoint(model), directory / MODEL_TORCH)
    catalog.save(directory / CATALOG)
    retrieval.save(directory / RETRIEVAL)
    if item_index is None:
        build_item_index(retrieval.item_embeddings, directory / ITEM_INDEX)
    else:
        item_index.save(directory / ITEM_INDEX)
    (directory / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return write_manifest(
        directory,
        model_version=model_version(onnx_path),
        model_config=model.config.to_dict(),
        encoder_config=dict(encoder_config),
        training_data=training_data,
        extra={**(extra or {}), "onnx": {"opset": ONNX_OPSET, "parity_max_abs_diff": parity}},
        extra_files=(*onnx_files[1:], ITEM_INDEX, *activity_files, *extra_files),
    )
