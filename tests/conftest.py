"""Shared fixtures: one tiny trained artifact per test session, and real servers on port 0."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unirank.artifact import TASKS, Artifact
from unirank.server.app import UniRankServer
from unirank.server.config import Profile, load_profile
from unirank.server.profile_io import derive_profile

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"
TASK_NAMES = tuple(spec.name for spec in TASKS)
"""Every use-case the task registry knows, in registry order."""


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small but really trained artifact (``UNIRANK_TEST_ARTIFACT`` reuses a prebuilt one)."""
    prebuilt = os.environ.get("UNIRANK_TEST_ARTIFACT")
    if prebuilt:
        return Path(prebuilt)
    from unirank.training.pipeline import TrainConfig, train_artifact

    return train_artifact(TrainConfig.tiny(seed=0), tmp_path_factory.mktemp("artifact"))


def profile_with(base: str = "cpu-realtime", **overrides: Any) -> Profile:
    """A shipped profile with nested overrides, e.g. ``tasks={"search": {...}}`` merged in."""
    return derive_profile(load_profile(PROFILES / f"{base}.toml"), overrides)


def relaxed_profile(base: str, timeout_ms: float = 10_000.0) -> Profile:
    """A shipped profile with every use-case's timeout raised to ``timeout_ms`` and callers past
    the execution slots waiting in line for one as long as it takes (cpu-realtime ships a 20 ms
    bound, which a busy CI machine running concurrent test load would turn into refusals)."""
    names = load_profile(PROFILES / f"{base}.toml").tasks
    return profile_with(
        base,
        server={"max_queued_rpcs": 100_000, "max_queue_wait_ms": 0},
        tasks={name: {"timeout_ms": timeout_ms} for name in names},
    )


def known_query(artifact: Artifact) -> str:
    """The title token that matches the most items."""
    counts = np.diff(artifact.retrieval.lexical_indptr)
    return artifact.catalog.tokens.key(int(np.argmax(counts)))


@asynccontextmanager
async def running_server(profile: Profile | str, artifact: Path) -> AsyncIterator[UniRankServer]:
    """A real server bound to 127.0.0.1 on a free port.

    A profile given by name gets generous timeouts: on a busy 2-core CI machine a GC pause or a
    descheduled thread can outlast a 50 ms budget, and tests that are not about timeouts must not
    flip to the deadline fallback. Tests about timeouts pass a Profile with explicit values.
    """
    if isinstance(profile, str):
        profile = relaxed_profile(profile)
    server = UniRankServer(profile, artifact, host="127.0.0.1", port=0)
    await server.start()
    try:
        await server.drift_reference_ready()  # measured after SERVING; tests see drift from the first request
        yield server
    finally:
        await server.stop(grace_s=1.0)


ServerFactory = Callable[..., Any]


@pytest.fixture
def server_factory(artifact_dir: Path) -> ServerFactory:
    def make(profile: Profile | str = "cpu-realtime") -> Any:
        return running_server(profile, artifact_dir)

    return make
