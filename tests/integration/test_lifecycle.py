"""Lifecycle: hot reload under load, refused corrupt artifacts, polling, drain on shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from unirank_bench.servers import run_serve

from unirank.artifact import ArtifactError, Catalog, load_artifact
from unirank.artifact.store import REPOSITORY_MARKER, catalog_file, init_repository, sha256_file
from unirank.client import AsyncRecommenderClient, UniRankError
from unirank.server.repository import check_same_family

from ..conftest import PROFILES, profile_with, relaxed_profile, running_server


def clone_version(src: Path, dst: Path, version: str) -> Path:
    """A copy of ``src`` published as another model version (checksums stay valid)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["model_version"] = version
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


async def _load(
    client: AsyncRecommenderClient, item: str, stop: asyncio.Event, versions: list[str], errors: list[str]
) -> None:
    while not stop.is_set():
        try:
            ranking = await client.category("no-such-category")  # fallback path
            versions.append(ranking.model_version)
            ranking = await client.related_items(item)  # model path
            versions.append(ranking.model_version)
        except UniRankError as error:
            errors.append(f"{error.code}: {error.message}")


async def test_hot_reload_under_concurrent_load_fails_no_request(artifact_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repository(repo)
    clone_version(artifact_dir, repo / "v001", "v001")
    async with (
        running_server("cpu-realtime", repo) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        stop = asyncio.Event()
        versions: list[str] = []
        errors: list[str] = []
        item = server.pipeline.runtime.artifact.catalog.items.key(1)
        workers = [asyncio.create_task(_load(client, item, stop, versions, errors)) for _ in range(8)]
        await asyncio.sleep(0.3)
        clone_version(artifact_dir, repo / "v002", "v002")
        assert await server.reload() == "v002"
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)
        info = await client.model_info()
    assert errors == []
    assert info.model_version == "v002"
    assert "v001" in versions and "v002" in versions
    switch = versions.index("v002")
    # After the swap, requests that start later see v002; a few already in flight finish on v001.
    assert versions[switch:].count("v001") <= 16
    assert server.reloads == 1


@pytest.mark.parametrize("damage", ["checksum", "truncated_onnx", "missing_file"])
async def test_corrupt_artifact_is_refused_and_the_old_one_keeps_serving(
    artifact_dir: Path, tmp_path: Path, damage: str
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo)
    clone_version(artifact_dir, repo / "v001", "v001")
    # A missing file is refused at once here, not retried as a copy in progress.
    profile = relaxed_profile("cpu-realtime")
    profile = profile.model_copy(
        update={"model": profile.model.model_copy(update={"incomplete_version_timeout_s": 0.0})}
    )
    async with (
        running_server(profile, repo) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        bad = clone_version(artifact_dir, repo / "v002", "v002")
        if damage == "checksum":
            with (bad / catalog_file(load_artifact(bad).manifest["files"])).open("a") as handle:
                handle.write(" ")
        elif damage == "truncated_onnx":
            data = (bad / "model.onnx").read_bytes()
            (bad / "model.onnx").write_bytes(data[: len(data) // 2])
        else:
            (bad / "retrieval.npz").unlink()
        with pytest.raises(ArtifactError):
            await server.reload()
        ranking = await client.search("zzqx")
        # The refused version is not retried on every poll.
        assert await server.reload() == "v001"
    assert ranking.model_version == "v001"
    assert server.reload_failures == 1


async def test_new_version_is_picked_up_by_polling(artifact_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repository(repo)
    clone_version(artifact_dir, repo / "v001", "v001")
    profile = profile_with(model={"artifact_poll_interval_s": 0.05})
    async with running_server(profile, repo) as server, AsyncRecommenderClient(server.address) as client:
        clone_version(artifact_dir, repo / "v002", "v002")
        for _ in range(200):
            if (await client.model_info()).model_version == "v002":
                break
            await asyncio.sleep(0.05)
        assert (await client.model_info()).model_version == "v002"


async def test_drain_finishes_in_flight_requests_and_refuses_new_ones(artifact_dir: Path) -> None:
    # Slots for every caller: the test holds several calls in flight at once.
    profile = profile_with(server={"max_concurrent_rpcs": 64}, tasks={"related_items": {"timeout_ms": 8000}})
    async with running_server(profile, artifact_dir) as server:
        pipeline = server.pipeline
        assert pipeline is not None
        backend = pipeline.runtime.backend
        real_score = backend.score
        gate = asyncio.Event()

        async def slow_score(inputs, deadline=None, *, tag=None):  # type: ignore[no-untyped-def]
            await gate.wait()
            return await real_score(inputs, deadline, tag=tag)

        backend.score = slow_score  # type: ignore[method-assign]
        item = pipeline.runtime.artifact.catalog.items.key(1)
        async with AsyncRecommenderClient(server.address, timeout=10) as client:
            in_flight = [asyncio.create_task(client.related_items(item, timeout=10)) for _ in range(5)]
            async with asyncio.timeout(10):
                while server.admission.in_flight < 5:
                    await asyncio.sleep(0.01)
            stopping = asyncio.create_task(server.stop(grace_s=5.0))
            await asyncio.sleep(0.05)
            with pytest.raises(UniRankError) as refused:
                await client.search("zzqx")
            health_during_drain = await client.health()
            gate.set()
            results = await asyncio.gather(*in_flight, return_exceptions=True)
            await stopping
    assert refused.value.code == "UNAVAILABLE"
    assert health_during_drain == "NOT_SERVING"
    assert all(not isinstance(r, BaseException) for r in results), results
    assert all(not r.fallback and r.items for r in results)  # finished by the model, not cut short


def other_catalogue(src: Path, dst: Path, version: str) -> Path:
    """A copy of ``src`` whose items have other ids: another data set's version (checksums updated)."""
    clone_version(src, dst, version)
    manifest = json.loads((dst / "manifest.json").read_text())
    name = catalog_file(manifest["files"])
    catalog = Catalog.load(dst / name).to_json()
    catalog["items"] = [f"other-{key}" if key else key for key in catalog["items"]]
    Catalog.from_json(catalog).save(dst / name)
    manifest["files"][name] = sha256_file(dst / name)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize("allowed", [False, True])
async def test_a_reload_to_another_catalogue_is_refused_unless_allowed(
    artifact_dir: Path, tmp_path: Path, allowed: bool
) -> None:
    repo = init_repository(tmp_path / "repo")
    clone_version(artifact_dir, repo / "v001", "v001")
    profile = profile_with(model={"allow_catalog_change": allowed})
    async with running_server(profile, repo) as server:
        other_catalogue(artifact_dir, repo / "v002", "v002")
        if allowed:
            assert await server.reload() == "v002"
        else:
            with pytest.raises(ArtifactError, match="another catalogue"):
                await server.reload()
            assert server.pipeline.runtime.version == "v001"


def test_check_same_family_tells_model_families_apart(artifact_dir: Path) -> None:
    serving = load_artifact(artifact_dir)
    manifest = json.loads(json.dumps(serving.manifest))
    manifest["model_config"]["architecture"] = "some_other_net"
    check_same_family(serving, serving)
    with pytest.raises(ArtifactError, match="'some_other_net' model"):
        check_same_family(serving, dataclasses.replace(serving, manifest=manifest))


async def test_an_unmarked_directory_of_versions_is_not_served(artifact_dir: Path, tmp_path: Path) -> None:
    build = tmp_path / "build"  # like `--artifact build`: a trained artifact among other outputs
    clone_version(artifact_dir, build / "artifact", "v001")
    (build / "bench").mkdir()
    code, output = await run_serve(
        ["--profile", str(PROFILES / "cpu-realtime.toml"), "--artifact", str(build), "--port", "0"]
    )
    assert code == 3, output
    assert "not an artifact (no manifest.json) nor an artifact repository" in output
    assert f"touch {build / REPOSITORY_MARKER}" in output and "Traceback" not in output
