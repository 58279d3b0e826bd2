"""``make bench-scale`` on the session artifact: one size measured end to end against a real
server (seconds, no timing asserted), and the report it writes into the benchmarks page."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from unirank_bench import scale
from unirank_bench.scale import APPROXIMATE
from unirank_bench.scale_repack import needs_repack, repack
from unirank_bench.scale_report import BEGIN, END, PLOTS, write_report

from unirank.artifact import load_artifact
from unirank.model.net import build_model_from_checkpoint
from unirank.training.export import random_inputs

from ..server.test_artifact_format import older_format


def test_one_size_is_measured_and_reported(artifact_dir: Path, tmp_path: Path) -> None:
    args = argparse.Namespace(
        queries=20,
        seed=0,
        requests=40,
        ef_search=512,
        startups=1,
        seconds=0.5,
        warmup=0.2,
        use_cases=APPROXIMATE,  # the use-cases that search the item index
    )
    row = scale.measure(400, artifact_dir, tmp_path, args)
    assert set(row["use_cases"]) == set(APPROXIMATE)
    for loads in row["use_cases"].values():
        assert loads["c1"]["answers"] > 0 and loads["c32"]["answers"] > 0
        assert loads["c1"]["failures"] == loads["c32"]["failures"] == 0
    # Exact and approximate search agree on a tiny catalogue at any search list.
    assert all(r["recall_at_200"] > 0.95 for r in row["recall"].values())
    # Below 50,000 items the related-items lists hold the exact neighbours of unplayed items.
    assert row["related_recall_at_50"] is None or row["related_recall_at_50"] > 0.95
    assert row["startup_s"][0] > 0 and row["peak_rss_mb"] >= row["rss_idle_mb"] > 0
    assert row["artifact_mb"] > 0

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nkept\n")
    result = {"sizes": [row], "cores": 2, "ef_search": 512, "seconds": 0.5, "command": "test", "when": "now"}
    write_report(result, tmp_path, doc)
    write_report(result, tmp_path, doc)  # the block is replaced, not appended twice
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and text.count(BEGIN) == text.count(END) == 1
    assert "| 400 |" in text
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in PLOTS)


def test_an_artifact_of_the_older_format_is_rewritten_in_the_current_one(
    artifact_dir: Path, tmp_path: Path
) -> None:
    old = older_format(artifact_dir, tmp_path / "old")
    before = load_artifact(old)
    assert needs_repack(old)
    repack(old)
    after = load_artifact(old)  # verifies every checksum
    assert not needs_repack(old)
    assert after.manifest["repacked_from"] == before.model_version
    assert after.manifest["training"] == before.manifest["training"]
    assert after.catalog.to_json() == before.catalog.to_json()
    assert after.retrieval.related_items.dtype == np.int32
    assert np.array_equal(after.retrieval.related_items, before.retrieval.related_items)
    model = build_model_from_checkpoint(torch.load(after.torch_path, weights_only=True))
    feeds = random_inputs(model, batch=3, history=4, query=2, candidates=7, seed=2).as_dict()
    scores = [
        ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        for path in (artifact_dir, old)
    ]
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-5, atol=1e-5)
