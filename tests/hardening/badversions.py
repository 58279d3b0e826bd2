"""Bad artifact versions, as an operator might publish them: graphs that answer wrongly, malformed
but checksummed metadata, half-copied directories.

Graphs are built by editing the real exported ``model.onnx`` with ``onnx.helper``: its inputs stay
as they are (so the server's input-name check passes) and nodes are appended after its scores.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from unirank.artifact.store import MANIFEST, MODEL_ONNX, sha256_file

RAW = "raw_scores"

GRAPH_KINDS = ("nan", "column", "transposed", "mixes_rows")
"""Graphs refused at warm-up: NaN scores, a [batch, 1] output, a [candidates, batch] output, rows
that change with their batch mates (each row minus the batch mean: 0 alone, not in a batch)."""


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _tail(kind: str) -> list[onnx.NodeProto]:
    """Nodes that turn ``raw_scores`` [B, N] into the graph's ``scores`` output."""
    if kind == "nan":
        return [
            _constant("nan", np.array(np.nan, dtype=np.float32)),
            helper.make_node("Add", [RAW, "nan"], ["scores"]),
        ]
    if kind == "column":
        return [helper.make_node("ReduceMax", [RAW], ["scores"], axes=[1], keepdims=1)]
    if kind == "transposed":
        return [helper.make_node("Transpose", [RAW], ["scores"], perm=[1, 0])]
    if kind == "mixes_rows":
        return [
            helper.make_node("ReduceMean", [RAW], ["batch_mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", [RAW, "batch_mean"], ["scores"]),
        ]
    if kind == "fails_to_run":  # every call raises in ONNX Runtime: 10 scores are not rows of 7
        return [
            _constant("rows_of_7", np.array([-1, 7], dtype=np.int64)),
            helper.make_node("Reshape", [RAW, "rows_of_7"], ["scores"]),
        ]
    if kind == "nan_for_known_users":
        # Right at warm-up (it sends no user), NaN for every request of a known user.
        return [
            _constant("zero_id", np.array(0, dtype=np.int64)),
            _constant("row_axis", np.array([1], dtype=np.int64)),
            _constant("nan", np.array(np.nan, dtype=np.float32)),
            _constant("zero", np.array(0.0, dtype=np.float32)),
            helper.make_node("Greater", ["user", "zero_id"], ["known"]),
            helper.make_node("Unsqueeze", ["known", "row_axis"], ["known_rows"]),
            helper.make_node("Where", ["known_rows", "nan", "zero"], ["poison"]),
            helper.make_node("Add", [RAW, "poison"], ["scores"]),
        ]
    raise ValueError(f"unknown bad graph {kind!r}")


def break_graph(model_path: Path, kind: str) -> None:
    """Rewrite ``model_path`` in place so that its ``scores`` come out wrong as ``kind`` says."""
    model = onnx.load(str(model_path))
    graph = model.graph
    for node in graph.node:
        node.output[:] = [RAW if name == "scores" else name for name in node.output]
        node.input[:] = [RAW if name == "scores" else name for name in node.input]
    graph.node.extend(_tail(kind))
    (output,) = graph.output
    output.CopyFrom(helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, None]))
    onnx.checker.check_model(model)
    onnx.save(model, str(model_path))


def resign(version_dir: Path, model_version: str | None = None) -> None:
    """Rewrite the manifest's checksums (and version) as whoever changed the files would."""
    manifest = json.loads((version_dir / MANIFEST).read_text())
    manifest["files"] = {name: sha256_file(version_dir / name) for name in manifest["files"]}
    if model_version is not None:
        manifest["model_version"] = model_version
    (version_dir / MANIFEST).write_text(json.dumps(manifest))


def publish(
    source: Path, destination: Path, version: str, edit: Callable[[Path], None] | None = None
) -> Path:
    """A checksummed copy of ``source`` as ``version``, ``edit``-ed first, published atomically
    (written under a hidden name, then renamed into place)."""
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.copytree(source, staging)
    if edit is not None:
        edit(staging)
    resign(staging, version)
    staging.rename(destination)
    return destination


def bad_graph(kind: str) -> Callable[[Path], None]:
    return lambda version_dir: break_graph(version_dir / MODEL_ONNX, kind)


def metrics_as(content: object) -> Callable[[Path], None]:
    """Replace metrics.json with ``content`` (it is re-checksummed: malformed, not tampered)."""
    return lambda version_dir: (version_dir / "metrics.json").write_text(json.dumps(content))


def manifest_edit(change: Callable[[dict[str, object]], None]) -> Callable[[Path], None]:
    """Change the manifest's content before it is re-checksummed."""

    def edit(version_dir: Path) -> None:
        manifest = json.loads((version_dir / MANIFEST).read_text())
        change(manifest)
        (version_dir / MANIFEST).write_text(json.dumps(manifest))

    return edit


def half_copied(source: Path, destination: Path, version: str, missing: str = MODEL_ONNX) -> Path:
    """What ``cp -r`` leaves while still copying: the manifest and every file but ``missing``."""
    publish(source, destination, version)
    (destination / missing).unlink()
    return destination
