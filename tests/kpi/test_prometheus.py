"""A real Prometheus server scrapes a live UniRank (its Prometheus exporter) every second, evaluates
the rendered rules, and answers the per-task CTR recording rule through its HTTP API."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from unirank.artifact import load_artifact
from unirank.client import AsyncRecommenderClient, Event
from unirank.server.alerts import render_file

from ..conftest import profile_with
from ..integration.test_freshness import _free_port
from ..telemetry.conftest import traced_server

CTR_RULE = "task:unirank_kpi_ctr:ratio_rate1h"


class Prometheus:
    def __init__(self, tmp: Path, target: str, rules: Path) -> None:
        self.port = _free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [{"job_name": "unirank", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def query(self, expr: str) -> dict[str, float]:
        """``expr``'s instant vector by ``unirank_task_type`` (empty before Prometheus is up)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = json.load(response)
        except OSError:
            return {}
        return {
            r["metric"].get("unirank_task_type", ""): float(r["value"][1]) for r in body["data"]["result"]
        }

    def ready(self) -> bool:
        """Prometheus answers ``/-/ready`` (its storage is open and it scrapes)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def prometheus_binary() -> None:
    if shutil.which("prometheus") is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed; .ci/run installs Debian's prometheus")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")


async def _until(check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):  # type: ignore[arg-type]
            return
        await asyncio.sleep(0.25)
    raise AssertionError("Prometheus never showed it")


@pytest.mark.usefixtures("prometheus_binary")
async def test_prometheus_reads_the_per_task_ctr_back(artifact_dir: Path, tmp_path: Path) -> None:
    profile = profile_with(tasks={"search": {"timeout_ms": 10_000}, "notification": {"timeout_ms": 10_000}})
    rules = tmp_path / "rules.yml"
    rules.write_text(render_file(profile))
    catalog = load_artifact(artifact_dir).catalog
    users = [catalog.users.key(i) for i in range(1, 21)]
    query = catalog.titles[1].split()[0]
    clicks_every = {"notification": 1, "search": 4}  # true CTR 1.0 and 0.25
    async with traced_server(profile, artifact_dir, metrics_exporter="prometheus", prometheus_port=0) as (
        server,
        captured,
    ):
        endpoint = captured.telemetry.prometheus
        assert endpoint is not None
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{endpoint.port}", rules)
        try:
            async with AsyncRecommenderClient(server.address) as client:

                async def traffic(rounds: int, click: bool) -> None:
                    for n in range(rounds):
                        user = users[n % len(users)]
                        answers = {
                            "notification": await client.notification(user),
                            "search": await client.search(f"{query} {n}", user_id=user),
                        }
                        for task, answer in answers.items():
                            if click and n % clicks_every[task] == 0 and answer.items:
                                item = answer.items[0].item_id
                                await client.record_events(
                                    [Event(user, item, "click", impression_id=answer.impression_id)]
                                )

                # The series must exist before the clicks: a rate counts what happens after its first sample.
                await traffic(4, click=False)
                # Prometheus's own start (storage, WAL) took over 20 s once on CI's loaded 2 cores.
                await _until(prometheus.ready, timeout_s=90.0)
                await _until(lambda: len(prometheus.query("unirank_kpi_impressions_total")) == 2)
                for _ in range(4):  # a few seconds of traffic, scraped every second
                    await traffic(40, click=True)
                    await asyncio.sleep(0.5)
                await asyncio.sleep(2.5)  # the last scrape and rule evaluation
                await _until(lambda: len(prometheus.query(CTR_RULE)) == 2)
                ctr = await asyncio.to_thread(prometheus.query, CTR_RULE)
        finally:
            prometheus.stop()
    # rate() extrapolates each series a little differently at its start: close, not exact.
    assert ctr["notification"] == pytest.approx(1.0, rel=0.15)
    assert ctr["search"] == pytest.approx(0.25, rel=0.15)
