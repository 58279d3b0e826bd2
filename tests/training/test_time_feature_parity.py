"""Time features (recent popularity, item age): the same events give the same feature values and the
same scores in training and in serving, and nothing at or after a row's time is ever read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import profile_with, running_server
from unirank.artifact import ArtifactError, Context, TaskType, load_artifact
from unirank.artifact.activity import (
    ACTIVITY_FILE,
    DAY_MS,
    STALE_AFTER_DAYS,
    ActivityHistory,
    release_times_ms,
)
from unirank.model.net import build_model_from_checkpoint
from unirank.server.online_store import RecentEvent
from unirank.training.dataset import item_events
from unirank.training.sources import load_logs


def _random_events(
    seed: int, n_items: int, n: int, start_ms: int, days: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, n_items, n), start_ms + rng.integers(0, days * int(DAY_MS), n)


def test_the_training_view_reads_only_events_strictly_before_the_row_time() -> None:
    release = release_times_ms(np.array([0, 2020, 0]))
    history = ActivityHistory(3, np.array([1, 1, 2]), np.array([100, 200, 300]), release)
    at = np.array([100, 101, 300])
    features = history.features(np.array([[1, 2], [1, 2], [1, 2]]), at)
    assert features[0, 0, 0] == 0.0 and features[0, 0, 1] == 0.0  # the event at 100 is not before 100
    assert features[1, 0, 0] > 0.0 and features[1, 0, 1] == pytest.approx(1.0)  # first seen 1 ms ago
    assert features[2, 1, 0] == 0.0  # item 2's only event is at the row's time
    assert features[2, 0, 0] > features[1, 0, 0]  # two events count more than one
    assert features[0, 0, 2] == 1.0 and features[0, 1, 2] == 0.0  # released later: 1; unknown year: 0
    # events after the row's time change nothing
    more = ActivityHistory(3, np.array([1, 1, 2, 1]), np.array([100, 200, 300, 250]), release)
    np.testing.assert_array_equal(
        more.features(np.array([[1, 2]]), np.array([201])),
        history.features(np.array([[1, 2]]), np.array([201])),
    )


def test_folding_events_online_equals_reading_them_offline() -> None:
    items, times = _random_events(0, 40, 3000, 0, 400)
    release = release_times_ms(np.where(np.arange(40) % 3 == 0, 1990 + np.arange(40) % 30, 0))
    cut = 200 * int(DAY_MS)
    offline = ActivityHistory(40, items, times, release)
    early = times < cut
    online = ActivityHistory(40, items[early], times[early], release).final_state()
    late = np.flatnonzero(~early)
    online.record(items[late], times[late])  # any order: a late event adds its decayed weight
    at = np.array([401 * DAY_MS, 450 * DAY_MS])
    candidates = np.tile(np.arange(40), (2, 1))
    np.testing.assert_allclose(online.features(candidates, at), offline.features(candidates, at), atol=1e-6)


def test_a_request_without_a_time_is_read_at_now_or_at_the_newest_event_of_archived_logs() -> None:
    items, times = _random_events(1, 10, 200, 0, 100)
    state = ActivityHistory(10, items, times, release_times_ms(np.zeros(10, dtype=np.int64))).final_state()
    newest = float(times.max())
    assert state.newest_ms == newest
    live = newest + 2 * DAY_MS  # events two days ago: live traffic, the clock is the clock
    assert state.clock_ms(live) == live
    archived = newest + (STALE_AFTER_DAYS + 1) * DAY_MS  # a month and more without an event
    assert state.clock_ms(archived) == newest
    state.record(np.array([3]), np.array([archived - DAY_MS]))  # a recorded event: live again
    assert state.newest_ms == archived - DAY_MS and state.clock_ms(archived) == archived


async def test_same_events_give_the_same_features_and_scores_in_training_and_serving(
    artifact_dir: Path,
) -> None:
    artifact = load_artifact(artifact_dir)
    config = artifact.manifest["model_config"]
    if not config.get("time_features"):
        pytest.skip("the test artifact has no time features")
    recorded = artifact.manifest["training_data"]
    log = load_logs(recorded["data"], size=recorded["size"], seed=int(recorded["seed"]))
    trained = item_events(log, artifact.catalog)  # what training read the features from
    half_life = float(config["recent_half_life_days"])
    shipped, offline_end = artifact.activity, trained.history(half_life).final_state()
    assert shipped is not None
    for name in ("count", "last_ms", "first_ms", "release_ms"):
        np.testing.assert_array_equal(getattr(shipped, name), getattr(offline_end, name), err_msg=name)

    # New events after the logs, recorded through the server's RecordEvents path.
    end_ms = int(log.events.timestamp_ms.max())
    n_items = len(artifact.catalog.items)
    items, times = _random_events(1, min(n_items, 30), 200, end_ms + 1, 10)
    order = np.argsort(times, kind="stable")
    items, times = items[order], times[order]
    at_ms = end_ms + 12 * DAY_MS
    candidates = np.arange(1, min(n_items, 40))[None, :]
    profile = profile_with(features={"store": "memory"})
    async with running_server(profile, artifact_dir) as server:
        runtime = server.pipeline.runtime
        before = runtime.encoder.batch(
            [runtime.encoder.encode(Context(TaskType.NOTIFICATION))], candidates, at_ms
        )
        events = [
            RecentEvent(log.user_ids[0], artifact.catalog.items.key(int(i)), int(t))
            for i, t in zip(items, times, strict=True)
        ]
        await server.pipeline.record_events(events)
        history_ids = tuple(artifact.catalog.items.key(i) for i in (3, 5, 8))
        encoded = runtime.encoder.encode(Context(TaskType.NOTIFICATION, log.user_ids[0], history_ids))
        inputs = runtime.encoder.batch([encoded], candidates, at_ms)
        served_scores = await runtime.backend.score(inputs)

    offline = ActivityHistory(
        n_items,
        np.concatenate([trained.items, items]),
        np.concatenate([trained.times_ms, times]),
        trained.release_ms,
        half_life,
    )
    offline_features = offline.features(candidates, np.array([at_ms]))
    assert inputs.candidate_time is not None and before.candidate_time is not None
    assert not np.allclose(inputs.candidate_time, before.candidate_time)  # the events were folded in
    np.testing.assert_allclose(inputs.candidate_time, offline_features, atol=1e-6)

    model = build_model_from_checkpoint(torch.load(artifact.torch_path, weights_only=True))
    with torch.no_grad():
        training_scores = model(
            *(
                torch.from_numpy(value)
                for name, value in inputs.as_dict().items()
                if name != "candidate_time"
            ),
            candidate_time=torch.from_numpy(offline_features),
        ).numpy()
    np.testing.assert_allclose(served_scores, training_scores, atol=1e-4)


def test_an_artifact_whose_model_wants_time_features_without_their_state_is_refused(
    artifact_dir: Path, tmp_path: Path
) -> None:
    if not load_artifact(artifact_dir).manifest["model_config"].get("time_features"):
        pytest.skip("the test artifact has no time features")
    broken = tmp_path / "artifact"
    shutil.copytree(artifact_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["files"][ACTIVITY_FILE]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=ACTIVITY_FILE):
        load_artifact(broken)


async def test_an_artifact_from_before_the_time_features_still_loads_and_serves(
    artifact_dir: Path, tmp_path: Path
) -> None:
    from unirank.training.config import TrainConfig
    from unirank.training.export import write_artifact
    from unirank.training.train import build_model

    artifact = load_artifact(artifact_dir)
    old = tmp_path / "old"
    old.mkdir()
    model = build_model(artifact.catalog, TrainConfig(time_features=False, mf_factors=0))
    manifest = write_artifact(
        old,
        model,
        artifact.catalog,
        artifact.retrieval,
        artifact.metrics,
        artifact.manifest["encoder"],
        artifact.manifest["training_data"],
    )
    for key in ("time_features", "recent_half_life_days"):  # as a manifest written before them
        del manifest["model_config"][key]
    (old / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_artifact(old)
    assert loaded.activity is None and loaded.encoder().activity is None
    assert ACTIVITY_FILE not in manifest["files"]
    async with running_server("cpu-realtime", old) as server:
        runtime = server.pipeline.runtime
        inputs = runtime.encoder.batch(
            [runtime.encoder.encode(Context(TaskType.NOTIFICATION))], np.array([[1, 2, 3]])
        )
        assert inputs.candidate_time is None
        assert (await runtime.backend.score(inputs)).shape == (1, 3)
