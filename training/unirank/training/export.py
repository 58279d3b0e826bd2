"""Write one artifact directory (ONNX + torch weights + catalogue + retrieval + metrics + manifest)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from unirank.artifact import Catalog, ModelInputs
from unirank.artifact.ann import ITEM_INDEX, build_item_index
from unirank.artifact.features import INPUT_NAMES, OUTPUT_NAME
from unirank.artifact.store import (
    CATALOG,
    METRICS,
    MODEL_ONNX,
    MODEL_TORCH,
    RETRIEVAL,
    Retrieval,
    write_manifest,
)
from unirank.model.net import UniRankModel, model_checkpoint
from unirank.model.serving import serving_model

ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4

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
    )


def torch_scores(model: UniRankModel, inputs: ModelInputs) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(inputs.as_dict()[name]) for name in INPUT_NAMES)).numpy()


def export_onnx(model: UniRankModel, path: Path, max_history: int, max_query_tokens: int) -> None:
    """Export ``model``'s serving form (:func:`unirank.model.serving.serving_model`): its precomputed tables
    make a graph of a few dozen nodes where the training forward traces to a few hundred."""
    model.eval()
    serving = serving_model(model)
    example = random_inputs(model, batch=2, history=max_history, query=max_query_tokens, candidates=5, seed=0)
    args = tuple(torch.from_numpy(example.as_dict()[name]) for name in INPUT_NAMES)
    with warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation; the contract pins dynamo=False.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            serving,
            args,
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=DYNAMIC_AXES,
            do_constant_folding=True,
        )


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
    """``YYYYMMDDTHHMMSS-<first 8 hex of the ONNX file's sha256>`` (UTC)."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:8]}"


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
) -> dict[str, Any]:
    """Write every artifact file into ``directory`` (which must exist), check parity, then the manifest."""
    model.eval()
    onnx_path = directory / MODEL_ONNX
    export_onnx(model, onnx_path, encoder_config["max_history"], encoder_config["max_query_tokens"])
    parity = check_onnx_parity(model, onnx_path)
    torch.save(model_checkpoint(model), directory / MODEL_TORCH)
    catalog.save(directory / CATALOG)
    retrieval.save(directory / RETRIEVAL)
    build_item_index(retrieval.item_embeddings, directory / ITEM_INDEX)
    (directory / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return write_manifest(
        directory,
        model_version=model_version(onnx_path),
        model_config=model.config.to_dict(),
        encoder_config=dict(encoder_config),
        training_data=training_data,
        extra={**(extra or {}), "onnx": {"opset": ONNX_OPSET, "parity_max_abs_diff": parity}},
        extra_files=(ITEM_INDEX, *extra_files),
    )
