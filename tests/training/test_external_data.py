"""A graph past the external-data threshold (a large catalogue's) keeps its tables in
``model.onnx.data``: checksummed in the manifest, page-aligned, and served by ONNX Runtime from the
artifact directory with the same scores as the one-file graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from unirank.artifact import ArtifactError, load_artifact
from unirank.artifact.features import OUTPUT_NAME
from unirank.artifact.store import MODEL_ONNX, MODEL_ONNX_DATA
from unirank.model.net import build_model_from_checkpoint
from unirank.server.backends.onnx_backend import OnnxBackend
from unirank.training.export import EXTERNAL_DATA_ALIGNMENT, random_inputs, write_artifact


@pytest.fixture(scope="module")
def split_artifact(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session artifact written again with every graph counted as large."""
    source = load_artifact(artifact_dir)
    model = build_model_from_checkpoint(torch.load(source.torch_path, weights_only=True))
    out = tmp_path_factory.mktemp("external-data")
    mp = pytest.MonkeyPatch()
    mp.setattr("unirank.training.export.EXTERNAL_DATA_ABOVE_BYTES", 0)
    try:
        write_artifact(
            out,
            model,
            source.catalog,
            source.retrieval,
            source.metrics,
            encoder_config=dict(source.manifest["encoder"]),
            training_data=dict(source.manifest["training_data"]),
            activity=source.activity,
        )
    finally:
        mp.undo()
    return out


def test_the_tables_live_in_the_checksummed_data_file(split_artifact: Path, artifact_dir: Path) -> None:
    manifest = json.loads((split_artifact / "manifest.json").read_text())
    assert MODEL_ONNX_DATA in manifest["files"]
    assert MODEL_ONNX_DATA not in json.loads((artifact_dir / "manifest.json").read_text())["files"]
    graph = onnx.load(str(split_artifact / MODEL_ONNX), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "no table moved out of the graph"
    for tensor in external:
        entries = {e.key: e.value for e in tensor.external_data}
        assert entries["location"] == MODEL_ONNX_DATA
        assert int(entries["offset"]) % EXTERNAL_DATA_ALIGNMENT == 0
    graph_mb = (split_artifact / MODEL_ONNX).stat().st_size
    assert graph_mb < (artifact_dir / MODEL_ONNX).stat().st_size / 4  # the graph is nodes, not tables


async def test_onnx_runtime_serves_it_with_the_same_scores(split_artifact: Path, artifact_dir: Path) -> None:
    model = build_model_from_checkpoint(torch.load(load_artifact(artifact_dir).torch_path, weights_only=True))
    inputs = random_inputs(model, batch=4, history=6, query=3, candidates=50, seed=3)
    one_file = ort.InferenceSession(str(artifact_dir / MODEL_ONNX), providers=["CPUExecutionProvider"])
    (expected,) = one_file.run([OUTPUT_NAME], inputs.as_dict())
    backend = OnnxBackend(load_artifact(split_artifact).onnx_path, workers=1)
    await backend.start()
    try:
        got = await backend.score(inputs)
    finally:
        await backend.close()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_a_changed_data_file_is_refused(split_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(split_artifact, copy)
    data = bytearray((copy / MODEL_ONNX_DATA).read_bytes())
    data[-1] ^= 0xFF
    (copy / MODEL_ONNX_DATA).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"checksum mismatch for model\.onnx\.data"):
        load_artifact(copy)
