"""Merging the workers' counters: counts add, uptime is the longest, drift windows pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from unirank.server.telemetry.drift import psi
from unirank.server.telemetry.workers import StatsExchange, merge_expositions, merge_stats
from unirank.v1 import recommender_pb2 as pb


def _stats(
    uptime: float, ok: int, buckets: list[int], live: list[float], samples: int
) -> pb.GetServingStatsResponse:
    message = pb.GetServingStatsResponse(uptime_s=uptime, latency_bucket_bounds_s=[0.001, 0.01])
    entry = message.tasks.add(task="search", latency_bucket_counts=buckets, served_by_model=ok, in_flight=1)
    entry.rpcs_by_code["OK"] = ok
    entry.fallbacks_by_reason["deadline"] = 1
    entry.drift.has_reference = True
    entry.drift.window_samples = samples
    entry.drift.bin_edges.extend([0.0, 1.0])
    entry.drift.reference_fractions.extend([0.5, 0.5])
    entry.drift.live_fractions.extend(live)
    return message


def test_counts_add_and_drift_windows_pool() -> None:
    own = _stats(10.0, ok=3, buckets=[1, 2, 0], live=[0.2, 0.8], samples=100)
    peer = _stats(12.5, ok=5, buckets=[0, 4, 1], live=[0.6, 0.4], samples=300)
    peer.tasks.add(task="category").rpcs_by_code["OK"] = 2
    merged = merge_stats(own, [peer], drift_min_samples=200)
    search = {entry.task: entry for entry in merged.tasks}["search"]
    assert merged.uptime_s == 12.5 and [entry.task for entry in merged.tasks] == ["category", "search"]
    assert dict(search.rpcs_by_code) == {"OK": 8} and dict(search.fallbacks_by_reason) == {"deadline": 2}
    assert list(search.latency_bucket_counts) == [1, 6, 1]
    assert (search.served_by_model, search.in_flight) == (8, 2)
    assert search.drift.window_samples == 400
    assert list(search.drift.live_fractions) == pytest.approx([0.5, 0.5])
    assert search.drift.psi == pytest.approx(psi([0.5, 0.5], [0.5, 0.5]))
    assert own.tasks[0].rpcs_by_code["OK"] == 3  # the worker's own reading is left as it was


def test_snapshots_are_exchanged_through_the_group_directory(tmp_path: Path) -> None:
    first, second = StatsExchange(tmp_path, 0), StatsExchange(tmp_path, 1)
    first.publish(_stats(1.0, ok=1, buckets=[1, 0, 0], live=[0.5, 0.5], samples=1))
    (tmp_path / "worker-2.pb").write_bytes(b"\xff not a message")  # a torn or foreign file is skipped
    assert [peer.tasks[0].rpcs_by_code["OK"] for peer in second.peers()] == [1]
    assert first.peers() == []


def test_expositions_merge_into_one_family_per_metric_with_a_worker_label() -> None:
    # What prometheus_client (behind the OpenTelemetry exporter) writes for a counter.
    text = (
        '# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total{task="search"} 3.0\n'
    )
    merged = merge_expositions([("0", text), ("1", text.replace("3.0", "4.0"))]).decode()
    assert merged.count("# TYPE requests_total counter") == 1 and "untyped" not in merged
    assert 'requests_total{task="search",worker="0"} 3.0' in merged
    assert 'requests_total{task="search",worker="1"} 4.0' in merged
