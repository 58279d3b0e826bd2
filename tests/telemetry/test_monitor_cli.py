"""`unirank monitor` against a running server: per-task rows from GetServingStats."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from unirank.artifact import load_artifact
from unirank.cli import main as unirank_main
from unirank.client import AsyncRecommenderClient

from .conftest import TASK_NAMES, one_call_per_task, traced_server


async def test_unirank_monitor_prints_per_task_rows_from_a_running_server(
    artifact_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = one_call_per_task(load_artifact(artifact_dir))
    async with traced_server("cpu-realtime", artifact_dir) as (server, _):
        async with AsyncRecommenderClient(server.address) as client:
            for call in calls.values():
                await call(client)
            await client.related_items("no-such-item")
        capsys.readouterr()
        status = await asyncio.to_thread(unirank_main, ["monitor", "--target", server.address, "--json"])
        snapshot = json.loads(capsys.readouterr().out)
        status_text = await asyncio.to_thread(unirank_main, ["monitor", "--target", server.address])
        table = capsys.readouterr().out
        watch = await asyncio.to_thread(
            unirank_main,
            [
                "monitor",
                "--target",
                server.address,
                "--json",
                "--watch",
                "--interval",
                "0.05",
                "--count",
                "2",
            ],
        )
        updates = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == status_text == watch == 0
    rows = {row["task"]: row for row in snapshot["tasks"]}
    assert set(rows) == set(TASK_NAMES)
    assert rows["related_items"]["rpcs"] == 2 and rows["related_items"]["fallback_rate"] == 0.5
    assert rows["related_items"]["fallbacks_by_reason"] == {"cold_start": 1}
    assert all(row["p50_ms"] is not None and row["error_rate"] == 0.0 for row in rows.values())
    assert snapshot["interval_s"] is None  # a single reading covers the uptime
    for task in TASK_NAMES:
        assert any(line.startswith(task) for line in table.splitlines())
    assert "p99 ms" in table and "related_items fallbacks: cold_start=1" in table
    assert len(updates) == 2 and updates[1]["interval_s"] > 0
    assert updates[1]["tasks"] == []  # nothing happened between the two readings
