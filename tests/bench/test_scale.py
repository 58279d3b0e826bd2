"""``make bench-scale`` on the session artifact: one size measured end to end against a real
server (seconds, no timing asserted), and the report it writes into the benchmarks page."""

from __future__ import annotations

import argparse
from pathlib import Path

from unirank_bench import scale
from unirank_bench.scale import APPROXIMATE
from unirank_bench.scale_report import BEGIN, END, PLOTS, write_report


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
