"""Exporters by configuration: the Prometheus scrape endpoint and the console exporter."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest

from unirank.artifact import load_artifact
from unirank.client import AsyncRecommenderClient
from unirank.server.config import TelemetrySection
from unirank.server.telemetry import Telemetry

from ..conftest import profile_with
from .conftest import TASK_NAMES, one_call_per_task, traced_server


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def test_prometheus_endpoint_serves_per_task_series(artifact_dir: Path) -> None:
    calls = one_call_per_task(load_artifact(artifact_dir))
    async with traced_server(
        "cpu-realtime", artifact_dir, metrics_exporter="prometheus", prometheus_port=0
    ) as (server, captured):
        endpoint = captured.telemetry.prometheus
        assert endpoint is not None and endpoint.port > 0
        async with AsyncRecommenderClient(server.address) as client:
            for call in calls.values():
                await call(client)
        text = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{endpoint.port}/metrics")
    for task in TASK_NAMES:
        assert f'unirank_task_type="{task}"' in text
    duration = [
        line for line in text.splitlines() if line.startswith("rpc_server_call_duration_seconds_count")
    ]
    assert len(duration) == len(TASK_NAMES) and all(
        'rpc_response_status_code="OK"' in line for line in duration
    )
    assert "unirank_server_requests_total{" in text
    assert "unirank_score_drift_psi" in text or "unirank_model_info" in text
    with pytest.raises(OSError):  # stopped with the server
        await asyncio.to_thread(_scrape, f"http://127.0.0.1:{endpoint.port}/metrics")


def test_console_exporter_writes_spans_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry = Telemetry.create(profile_with(), TelemetrySection(traces_exporter="console"), environ={})
    assert telemetry.tracer is not None and telemetry.providers.meter_provider is None
    telemetry.tracer.start_span("probe", attributes=telemetry.span_attributes("search", "v1")).end()
    telemetry.shutdown()  # flushes the batch processor
    span = json.loads(capsys.readouterr().out)
    assert span["name"] == "probe" and span["attributes"]["unirank.task_type"] == "search"
    assert span["resource"]["attributes"]["unirank.profile"] == "cpu-realtime"
