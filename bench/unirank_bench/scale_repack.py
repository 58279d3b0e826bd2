"""Re-export a scale artifact of an older format in the current one, without training it again.

``make bench-scale`` keeps its artifacts between runs (a million items take most of an hour to
generate and train). When the artifact format changes (the catalogue as columns, int32 indices in
the retrieval arrays and the graph's tables), the kept artifacts are rewritten by the current
writer (:func:`unirank.training.export.write_artifact`) from their own verified files: the same
weights (``model.pt``), catalogue, retrieval data, index, metrics and item activity, the graph
exported again and its parity with the weights checked again. The manifest records the version it
was rewritten from (``repacked_from``). Bench-only: a served artifact is retrained, not rewritten.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from unirank.artifact import load_artifact
from unirank.artifact.ann import ITEM_INDEX, ItemIndex
from unirank.artifact.store import CATALOG, CATALOG_JSON
from unirank.model.serving import CO_ENGAGEMENT_ROW_MAX

WRITTEN = ("schema_version", "model_version", "created_unix_ms", "model_config", "encoder",
           "training_data", "files", "onnx")  # fmt: skip
"""Manifest entries :func:`write_artifact` writes itself; the rest are carried over."""


OLDER_TABLES = frozenset({"item_rows", "title_rows", "history_neighbour_weights"})
"""Tables of graphs exported before the anchor and history rows were read from ``item_columns``."""


def needs_repack(path: Path) -> bool:
    """Written before ``catalog.npz`` (and the int32 tables that came with it) or its title keys,
    or with a graph that still has a table the serving model no longer exports."""
    import onnx

    manifest = json.loads((path / "manifest.json").read_text())
    if CATALOG_JSON in manifest.get("files", {}):
        return True
    with zipfile.ZipFile(path / CATALOG) as catalog:
        if "title_keys.npy" not in catalog.namelist():  # the first catalog.npz had no title keys
            return True
    graph = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
    if any(tensor.name in OLDER_TABLES for tensor in graph.initializer):
        return True
    # A catalogue past CO_ENGAGEMENT_ROW_MAX items now sums co-engagement at the candidates.
    row = next((t for t in graph.initializer if t.name == "item_zeros"), None)
    return row is not None and row.dims[-1] > CO_ENGAGEMENT_ROW_MAX


def repack(path: Path) -> float:
    """Rewrite the artifact at ``path`` in the current format, in place (atomically); seconds taken."""
    import torch

    from unirank.model.net import build_model_from_checkpoint
    from unirank.training.export import write_artifact
    from unirank.training.plots import TASK_METRICS, TRAINING_CURVES
    from unirank.training.train import torch_threads

    started = time.monotonic()
    artifact = load_artifact(path)
    manifest = artifact.manifest
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.repack-", dir=path.parent))
    staging.chmod(0o755)
    try:
        plots = [name for name in (TRAINING_CURVES, TASK_METRICS) if name in manifest["files"]]
        for name in plots:
            shutil.copy2(path / name, staging / name)
        with torch_threads(1):
            checkpoint = torch.load(artifact.torch_path, map_location="cpu", weights_only=True)
            write_artifact(
                staging,
                build_model_from_checkpoint(checkpoint),
                artifact.catalog,
                artifact.retrieval,
                artifact.metrics,
                encoder_config=manifest["encoder"],
                training_data=manifest["training_data"],
                extra={
                    **{key: value for key, value in manifest.items() if key not in WRITTEN},
                    "repacked_from": manifest["model_version"],
                },
                extra_files=tuple(plots),
                item_index=ItemIndex.load(path / ITEM_INDEX),
                activity=artifact.activity,
            )
        load_artifact(staging)
        old = path.with_name(f".{path.name}.old-{time.time_ns()}")
        path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return time.monotonic() - started
