"""Bad artifact versions are refused whole, the poller survives them, and refusals leak nothing
(issue 13, findings 1, 2, 8 and 9)."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
from pathlib import Path

import pytest
from unirank_bench.servers import run_serve

import unirank.server.app as app_module
from unirank.artifact import ArtifactError, load_artifact, store
from unirank.artifact.store import init_repository
from unirank.client import AsyncRecommenderClient
from unirank.server.profile_io import derive_profile

from ..conftest import PROFILES, relaxed_profile, running_server
from .badversions import (
    GRAPH_KINDS,
    bad_graph,
    half_copied,
    manifest_edit,
    metrics_as,
    publish,
)

POLL_S = 0.05


def polling_profile(incomplete_timeout_s: float = 60.0, **model: object):  # type: ignore[no-untyped-def]
    """cpu-realtime with relaxed timeouts, polling the repository every ``POLL_S``."""
    section = {
        "artifact_poll_interval_s": POLL_S,
        "incomplete_version_timeout_s": incomplete_timeout_s,
        **model,
    }
    return derive_profile(relaxed_profile("cpu-realtime"), {"model": section})


async def wait_for(condition, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def non_pool_threads() -> int:
    """Live threads besides asyncio.to_thread's pool (which grows on demand up to its bound)."""
    return sum(1 for thread in threading.enumerate() if not thread.name.startswith("asyncio_"))


def repository(artifact_dir: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    init_repository(repo)
    publish(artifact_dir, repo / "v001", "v001")
    return repo


@pytest.mark.parametrize("kind", GRAPH_KINDS)
async def test_a_graph_that_answers_wrongly_is_refused_at_reload(
    artifact_dir: Path, tmp_path: Path, kind: str
) -> None:
    repo = repository(artifact_dir, tmp_path)
    async with (
        running_server("cpu-realtime", repo) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        publish(artifact_dir, repo / "v002", "v002", bad_graph(kind))
        with pytest.raises(ArtifactError, match=r"shape|non-finite|differently alone and in a batch"):
            await server.reload()
        info = await client.model_info()
    assert info.model_version == "v001"
    assert server.reload_failures == 1
    assert server.telemetry.reload_outcomes == {"refused": 1}


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("nan", "non-finite scores"),
        ("column", r"shape \[1, 1\], expected \[1, 10\]"),
        ("metrics", "malformed metrics"),
        ("manifest", "malformed manifest"),
    ],
)
async def test_a_start_on_a_bad_version_exits_3_without_a_traceback(
    artifact_dir: Path, tmp_path: Path, kind: str, says: str
) -> None:
    edits = {
        "metrics": metrics_as([]),
        "manifest": manifest_edit(lambda m: m.update(encoder=[], model_config={"n_tasks": "5"})),
    }
    version = publish(artifact_dir, tmp_path / "v001", "v001", edits.get(kind) or bad_graph(kind))
    code, output = await run_serve(
        ["--profile", str(PROFILES / "cpu-realtime.toml"), "--artifact", str(version), "--port", "0"]
    )
    assert code == 3, output
    assert re.search(
        f"unirank serve: (refusing artifact|cannot start the model backend): .*{says}", output
    ), output
    assert "Traceback" not in output


async def test_a_non_finite_score_at_serve_time_answers_with_the_fallback(
    artifact_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A graph right at warm-up (no user) but NaN for known users: no NaN reaches a caller, and
    the broken model is logged once, not once per request."""
    version = publish(artifact_dir, tmp_path / "v001", "v001", bad_graph("nan_for_known_users"))
    # The offline drift reference: a served one scores known users at load and would refuse this
    # graph there (test_scoring_the_drift_reference_refuses_a_graph_wrong_for_known_users).
    offline = derive_profile(relaxed_profile("cpu-realtime"), {"telemetry": {"drift_reference": "offline"}})
    async with (
        running_server(offline, version) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        artifact = server.pipeline.runtime.artifact  # type: ignore[union-attr]
        users = [artifact.catalog.users.key(i) for i in range(1, 21)]
        rankings = [await client.notification(user) for user in users]
        history = [artifact.catalog.items.key(1)]
        anonymous = await client.notification("no-such-user", history_item_ids=history)
    for ranking in rankings:
        assert ranking.fallback_reason == "backend_error"
        assert "non-finite" in ranking.fallback_detail
        assert ranking.items and all(item.score == 0.0 for item in ranking.items)
    assert not anonymous.fallback and anonymous.items  # the model still answers where it can
    assert server.telemetry.stats.task("notification").fallbacks == {"backend_error": 20}
    assert sum("backend error on notification" in r.getMessage() for r in caplog.records) == 1


async def test_scoring_the_drift_reference_refuses_a_graph_wrong_for_known_users(
    artifact_dir: Path, tmp_path: Path
) -> None:
    """The served drift reference scores requests like real traffic at load (known users with
    their histories): a graph that passes warm-up but answers them NaN never serves."""
    version = publish(artifact_dir, tmp_path / "v001", "v001", bad_graph("nan_for_known_users"))
    code, output = await run_serve(
        ["--profile", str(PROFILES / "cpu-realtime.toml"), "--artifact", str(version), "--port", "0"]
    )
    assert code == 3, output
    assert "non-finite" in output and "Traceback" not in output, output


@pytest.mark.parametrize("kind", ["fails_to_run", "nan"])
async def test_refused_versions_leak_no_thread(artifact_dir: Path, tmp_path: Path, kind: str) -> None:
    repo = repository(artifact_dir, tmp_path)
    # Scoring threads and a batcher: what a refused version used to leave running.
    profile = polling_profile(inference_workers=2)
    async with running_server(profile, repo) as server:
        counts = [non_pool_threads()]
        for i in range(8):
            publish(artifact_dir, repo / f"v{i + 2:03d}", f"v{i + 2:03d}", bad_graph(kind))
            await wait_for(lambda n=i + 1: server.reload_failures == n)
            counts.append(non_pool_threads())
    assert server.reload_failures == 8
    # Each refused version used to leave its two scoring threads (and its session) behind.
    assert counts[-1] <= counts[0], counts


async def test_a_version_that_vanishes_while_listed_does_not_stop_the_poller(
    artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renamed out of the repository between the listing and the reading (the race that killed the
    poller with FileNotFoundError), then back in: it is loaded once it is there to stay."""
    repo = repository(artifact_dir, tmp_path)
    away = tmp_path / "away"
    resolve = app_module.resolve_artifact
    vanished: list[Path] = []

    def racing_resolve(path: str | Path) -> Path:
        found = resolve(path)
        if found.name == "v002" and not vanished:
            found.rename(away)  # gone before the server stats it
            vanished.append(found)
        return found

    monkeypatch.setattr(app_module, "resolve_artifact", racing_resolve)
    async with (
        running_server(polling_profile(), repo) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        publish(artifact_dir, repo / "v002", "v002")
        await wait_for(lambda: vanished and server.telemetry.reload_outcomes.get("unreadable"))
        away.rename(repo / "v002")
        await wait_for(lambda: server.reloads == 1)
        info = await client.model_info()
    assert info.model_version == "v002"
    assert server.reload_failures == 0 and server.poll_errors == 0


@pytest.mark.parametrize(
    "content",
    [[], {"tasks": []}, {"tasks": {"search": {"model": {"ndcg@10": "high"}}}}, {"score_reference": [1]}],
)
async def test_malformed_but_checksummed_metrics_are_refused_before_the_swap(
    artifact_dir: Path, tmp_path: Path, content: object
) -> None:
    repo = repository(artifact_dir, tmp_path)
    async with (
        running_server(polling_profile(), repo) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        publish(artifact_dir, repo / "v002", "v002", metrics_as(content))
        await wait_for(lambda: server.reload_failures == 1)
        refused = await client.model_info()
        publish(artifact_dir, repo / "v003", "v003")
        await wait_for(lambda: server.reloads == 1)
        info = await client.model_info()
    assert refused.model_version == "v001" and refused.tasks
    assert info.model_version == "v003"
    assert server.telemetry.reload_outcomes == {"refused": 1, "loaded": 1}


async def test_a_half_copied_version_is_loaded_once_complete(artifact_dir: Path, tmp_path: Path) -> None:
    """cp -r: the manifest arrives before model.onnx. The version is retried, not refused for good."""
    repo = repository(artifact_dir, tmp_path)
    async with (
        running_server(polling_profile(), repo) as server,
        AsyncRecommenderClient(server.address) as client,
    ):
        half_copied(artifact_dir, repo / "v002", "v002")
        await wait_for(lambda: server.telemetry.reload_outcomes.get("incomplete", 0) >= 3)
        assert (await client.model_info()).model_version == "v001"
        shutil.copy(artifact_dir / "model.onnx", repo / "v002" / "model.onnx")
        await wait_for(lambda: server.reloads == 1)
        info = await client.model_info()
    assert info.model_version == "v002"
    assert server.reload_failures == 0


async def test_a_half_copied_version_is_retried_without_polling(artifact_dir: Path, tmp_path: Path) -> None:
    """No poller: the reload (SIGHUP) that finds it incomplete keeps trying until it is complete."""
    repo = repository(artifact_dir, tmp_path)
    async with running_server("cpu-realtime", repo) as server:
        half_copied(artifact_dir, repo / "v002", "v002")
        with pytest.raises(ArtifactError, match=r"model\.onnx is missing"):
            await server.reload()
        shutil.copy(artifact_dir / "model.onnx", repo / "v002" / "model.onnx")
        await wait_for(lambda: server.reloads == 1)
    assert server.pipeline is not None and server.pipeline.runtime.version == "v002"


async def test_a_version_still_incomplete_after_the_timeout_is_refused(
    artifact_dir: Path, tmp_path: Path
) -> None:
    repo = repository(artifact_dir, tmp_path)
    async with running_server(polling_profile(incomplete_timeout_s=0.3), repo) as server:
        half_copied(artifact_dir, repo / "v002", "v002")
        await wait_for(lambda: server.reload_failures == 1)
        polls = server.telemetry.reload_outcomes.copy()
        await asyncio.sleep(5 * POLL_S)
        assert server.telemetry.reload_outcomes == polls  # refused for good, not retried
        shutil.copy(artifact_dir / "model.onnx", repo / "v002" / "model.onnx")  # ... until it changes
        await wait_for(lambda: server.reloads == 1)
    assert polls["incomplete"] >= 1 and polls["refused"] == 1


async def test_a_hidden_staging_directory_is_never_read(artifact_dir: Path, tmp_path: Path) -> None:
    """Atomic publish: copy under a name starting with '.', then rename it into place."""
    repo = repository(artifact_dir, tmp_path)
    async with running_server(polling_profile(), repo) as server:
        staging = half_copied(artifact_dir, repo / ".v002.tmp", "v002")
        await asyncio.sleep(5 * POLL_S)
        assert server.telemetry.reload_outcomes == {}
        shutil.copy(artifact_dir / "model.onnx", staging / "model.onnx")
        staging.rename(repo / "v002")
        await wait_for(lambda: server.reloads == 1)
    assert server.telemetry.reload_outcomes == {"loaded": 1}


def test_an_unreadable_file_is_refused_as_an_artifact_error(
    artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a raw OSError traceback at start (the CLI exits 3 on ArtifactError)."""
    version = publish(artifact_dir, tmp_path / "v001", "v001")

    def denied(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(store, "sha256_file", denied)
    with pytest.raises(ArtifactError, match=r"cannot read \w+\.\w+: .*Permission denied"):
        load_artifact(version)
