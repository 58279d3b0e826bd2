"""Faults through a real ``unirank serve`` process: a tampered artifact at start, SIGTERM under load.

(Backend raising or hanging, and a tampered artifact at reload, are driven in-process by
tests/integration/test_error_table.py and tests/integration/test_lifecycle.py.)
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
from unirank_bench.servers import run_serve, serving
from unirank_stress.sigterm import sigterm_under_load

from unirank.artifact import ArtifactError, load_artifact
from unirank.artifact.store import catalog_file, init_repository, sha256_file
from unirank.client import AsyncRecommenderClient

from ..conftest import PROFILES, running_server

DAMAGES = {
    # damage: (what is done to a copy of the artifact, what the refusal must say)
    "checksum": ("append a byte to the catalogue", "refusing artifact: .* checksum mismatch for catalog"),
    "truncated_onnx": ("cut model.onnx in half", "refusing artifact: .* checksum mismatch for model.onnx"),
    "missing_file": ("delete retrieval.npz", "refusing artifact: .* retrieval.npz is missing"),
    "truncated_onnx_resigned": (
        "cut model.onnx in half and re-checksum it in the manifest",
        "cannot start the model backend: .*model.onnx: not a loadable ONNX graph",
    ),
}


def damage(artifact: Path, copy: Path, how: str) -> Path:
    shutil.copytree(artifact, copy)
    if how == "checksum":
        with (copy / catalog_file(json.loads((copy / "manifest.json").read_text())["files"])).open(
            "a"
        ) as handle:
            handle.write(" ")
    elif how.startswith("truncated_onnx"):
        data = (copy / "model.onnx").read_bytes()
        (copy / "model.onnx").write_bytes(data[: len(data) // 2])
        if how.endswith("resigned"):  # whoever truncated it also rewrote the manifest
            manifest = json.loads((copy / "manifest.json").read_text())
            manifest["files"]["model.onnx"] = sha256_file(copy / "model.onnx")
            (copy / "manifest.json").write_text(json.dumps(manifest))
    else:
        (copy / "retrieval.npz").unlink()
    return copy


async def test_a_tampered_artifact_stops_the_start_with_a_clear_message(
    artifact_dir: Path, tmp_path: Path
) -> None:
    profile = PROFILES / "cpu-realtime.toml"
    copies = {how: damage(artifact_dir, tmp_path / how, how) for how in DAMAGES}
    results = await asyncio.gather(
        *(
            run_serve(["--profile", str(profile), "--artifact", str(copy), "--port", "0"])
            for copy in copies.values()
        )
    )
    for (how, (_, says)), (code, output) in zip(DAMAGES.items(), results, strict=True):
        assert code == 3, (how, output)
        assert re.search(f"unirank serve: {says}", output), (how, output)
        assert "Traceback" not in output and "unirank: serving" not in output, (how, output)


@pytest.mark.timeout(120)
async def test_sigterm_under_load_fails_no_request(artifact_dir: Path) -> None:
    item = load_artifact(artifact_dir).catalog.items.key(1)
    async with serving(PROFILES / "cpu-realtime.toml", artifact_dir) as served:
        report = await sigterm_under_load(served, item, callers=16, warm_s=0.5)
    assert report.exit_code == 0, "".join(served.output)
    assert report.failed == [], report.failed
    assert report.in_flight_at_signal > 0  # the signal really landed under load
    assert report.requests > report.in_flight_at_signal
    assert "Traceback" not in "".join(served.output)


async def test_a_broken_graph_with_a_matching_checksum_is_refused_at_reload(
    artifact_dir: Path, tmp_path: Path
) -> None:
    """The second line of defence: the checksum matches (the manifest was rewritten too), the graph
    does not load; the reload is refused and counted and the old version keeps serving."""
    repo = tmp_path / "repo"
    init_repository(repo)
    shutil.copytree(artifact_dir, repo / "v001")
    async with (
        running_server("cpu-realtime", repo) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        before = (await client.model_info()).model_version
        damage(artifact_dir, repo / "v002", "truncated_onnx_resigned")
        with pytest.raises(ArtifactError, match="not a loadable ONNX graph"):
            await server.reload()
        after = await client.related_items(load_artifact(artifact_dir).catalog.items.key(1))
    assert after.model_version == before and not after.fallback
    assert server.reload_failures == 1


async def test_a_port_in_use_stops_the_start_with_one_line(artifact_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        profile = PROFILES / "cpu-realtime.toml"
        code, output = await run_serve(
            ["--profile", str(profile), "--artifact", str(artifact_dir), "--port", str(port)]
        )
    assert code == 3, output
    assert f"unirank serve: cannot listen on 127.0.0.1:{port}: the port is in use" in output, output
    assert "Traceback" not in output and "add_port" not in output, output  # not gRPC core's own log
