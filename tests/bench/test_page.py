"""Smoke test of the page benchmark (``make bench-page``): pages of 1, 5 and 11 rows answer every
row, in a real server. No timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_page_bench_answers_every_row_of_every_shape(artifact_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "bench"), env.get("PYTHONPATH", "")) if p)
    out = tmp_path / "page.md"
    command = [
        sys.executable, "-m", "unirank_bench.page", "--artifact", str(artifact_dir),
        "--callers", "2", "--seconds", "0.3", "--rounds", "1", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()[2:]]
    assert [cells[1].strip() for cells in rows] == ["single row", "page of 1", "page of 5", "page of 11"]
    for cells in rows:
        assert cells[0].strip() == "2" and float(cells[4].replace(",", "")) > 0
