"""Section 4 of the stress report, faults: a backend that raises or hangs, and an artifact
damaged at start or at reload."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from unirank_bench.servers import run_serve

from tests.conftest import PROFILES, profile_with, running_server
from tests.hardening.test_faults import DAMAGES, damage
from unirank.artifact import ArtifactError, ModelInputs
from unirank.artifact.store import init_repository
from unirank.client import AsyncRecommenderClient
from unirank.server.backends.base import BackendError
from unirank_stress.common import Capture, md_table, ms


class _Faulty:
    name, device, inline = "faulty", "cpu", False

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner, self.mode = inner, mode

    async def score(self, inputs: ModelInputs, deadline: float | None = None, *, tag: Hashable = None) -> Any:
        if self.mode == "raise":
            raise BackendError("injected failure")
        await asyncio.sleep(30)

    async def start(self) -> None: ...

    async def close(self) -> None:
        await self.inner.close()


async def faults(artifact: Path, workdir: Path) -> list[str]:
    rows: list[list[object]] = []
    profile = profile_with(tasks={"related_items": {"timeout_ms": 60}, "notification": {"timeout_ms": 80}})
    async with (
        running_server(profile, artifact) as server,
        AsyncRecommenderClient(server.address, timeout=10) as client,
    ):
        pipeline = server.pipeline
        assert pipeline is not None
        real = pipeline.runtime.backend
        catalog = pipeline.runtime.artifact.catalog
        for mode, call, budget in (
            ("raise", lambda: client.related_items(catalog.items.key(3)), 60),
            ("hang", lambda: client.notification(catalog.users.key(1)), 80),
        ):
            pipeline.runtime.backend = _Faulty(real, mode)  # type: ignore[assignment]
            started = time.perf_counter()
            ranking = await call()
            elapsed = time.perf_counter() - started
            pipeline.runtime.backend = real
            rows.append(
                [
                    f"backend {'raises' if mode == 'raise' else 'hangs 30 s'}",
                    f"OK, fallback={ranking.fallback}, reason `{ranking.fallback_reason}`, "
                    f"{len(ranking.items)} items",
                    f"answered in {ms(elapsed)} (use-case timeout {budget} ms)",
                ]
            )

    # A tampered artifact at start: the real command, each damage.
    profile_path = PROFILES / "cpu-realtime.toml"
    for how, (what, _) in DAMAGES.items():
        copy = damage(artifact, workdir / f"start-{how}", how)
        code, output = await run_serve(
            ["--profile", str(profile_path), "--artifact", str(copy), "--port", "0"]
        )
        message = next((line for line in output.splitlines() if "unirank serve" in line), output[-200:])
        rows.append(
            [f"artifact at start: {what}", f"exit code {code}", f"`{message.replace(str(workdir), '…')}`"]
        )

    # A tampered artifact at reload: refused, counted, logged; the old version keeps serving.
    capture = Capture()
    logging.getLogger("unirank.server.app").addHandler(capture)
    try:
        for how, (what, _) in DAMAGES.items():
            repo = init_repository(workdir / f"repo-{how}")
            shutil.copytree(artifact, repo / "v001")
            async with (
                running_server("cpu-realtime", repo) as server,
                AsyncRecommenderClient(server.address, timeout=10) as client,
            ):
                good = server.pipeline.runtime.version if server.pipeline else "?"
                damage(artifact, repo / "v002", how)
                try:
                    await server.reload()
                    refused = "accepted (!)"
                except ArtifactError:
                    refused = "refused (ArtifactError)"
                served = (await client.model_info()).model_version
                log = next((line for line in capture.lines if "refused artifact" in line), "(no log line)")
                rows.append(
                    [
                        f"artifact at reload: {what}",
                        f"{refused}; still serving {'the old version' if served == good else served}; "
                        f"reload_failures = {server.reload_failures}",
                        f"`{log.replace(str(workdir), '…')[:160]}`",
                    ]
                )
            capture.lines.clear()
    finally:
        logging.getLogger("unirank.server.app").removeHandler(capture)
    return [
        "## 4. Faults",
        "",
        *md_table(["fault", "observed", "detail"], rows),
        "Automated tests: `tests/integration/test_error_table.py` (backend raising / hanging, fallback or "
        "the configured error), `tests/integration/test_lifecycle.py` (tampered artifact at reload, "
        "drain), `tests/hardening/test_faults.py` (tampered artifact at start through `unirank serve`, "
        "SIGTERM under load), `tests/server/test_torch_backend.py` (a checkpoint carrying pickled code is "
        "refused by `weights_only=True` and the payload never runs). Checksums of every file are verified "
        "before any file is parsed (`unirank.artifact.store.verify_artifact`). The online feature store "
        "being unavailable (serving degrades to features without fresh history) is covered by "
        "`tests/integration/test_freshness.py` and not repeated here.",
        "",
    ]
