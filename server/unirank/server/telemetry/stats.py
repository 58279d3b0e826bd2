"""Per-task serving counters kept in process: cheap enough to be always on.

They answer ``GetServingStats`` (``unirank monitor``) and feed the OpenTelemetry counters and gauges
through observable instruments, so a request pays a few integer increments for them, not an SDK call.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator

from unirank.server.telemetry.drift import DriftWindow, ScoreReference
from unirank.server.telemetry.kpi import KpiCounters

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the call and stage duration buckets, shared with the OTel histograms
so percentiles from ``unirank monitor`` and from Prometheus agree. Fine around the 1 ms a CPU
request takes, coarse towards the multi-second tail."""

BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

SERVED_BY = ("model", "cache", "fallback")


class TaskStats:
    """Counters of one task label since the server started."""

    __slots__ = (
        "cache_hits",
        "cache_misses",
        "drift",
        "fallbacks",
        "in_flight",
        "latency_counts",
        "latency_sum_s",
        "rankings",
        "rpcs",
    )

    def __init__(self, drift: DriftWindow | None) -> None:
        self.rpcs: dict[tuple[str, str], int] = {}
        """(method short name, status code name) -> finished RPCs."""
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        """Finished RPCs per duration bucket; the last one is the overflow above 10 s."""
        self.latency_sum_s = 0.0
        self.in_flight = 0
        self.rankings = dict.fromkeys(SERVED_BY, 0)
        """Ranked requests (a RecommendBatch member counts one) by what answered them."""
        self.cache_hits = 0
        self.cache_misses = 0
        self.fallbacks: dict[str, int] = {}
        """Fallback reason (``cold_start``, ``deadline``, ...) -> ranked requests it answered."""
        self.drift = drift

    def rpc_finished(self, method: str, code: str, duration_s: float) -> None:
        key = (method, code)
        self.rpcs[key] = self.rpcs.get(key, 0) + 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, duration_s)] += 1
        self.latency_sum_s += duration_s

    def rpcs_by_code(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, code), count in self.rpcs.items():
            out[code] = out.get(code, 0) + count
        return out


class ServingStats:
    """Task label -> :class:`TaskStats`, plus the drift references of the loaded model."""

    def __init__(self, drift_window: int, drift_min_samples: int) -> None:
        self._drift_window = drift_window
        self._drift_min_samples = drift_min_samples
        self._references: dict[str, ScoreReference] = {}
        self._tasks: dict[str, TaskStats] = {}
        self.kpis = KpiCounters()
        """Impressions and attributed feedback per task, model version and arm."""
        self.started_monotonic = time.monotonic()

    def task(self, label: str) -> TaskStats:
        stats = self._tasks.get(label)
        if stats is None:
            stats = self._tasks[label] = TaskStats(self._new_window(label))
        return stats

    def items(self) -> Iterator[tuple[str, TaskStats]]:
        return iter(sorted(self._tasks.copy().items()))  # callers may run on an exporter thread

    def set_references(self, references: dict[str, ScoreReference]) -> None:
        """A new model version: drift restarts against its own reference distributions."""
        self._references = dict(references)
        for label, stats in self._tasks.items():
            stats.drift = self._new_window(label)

    def _new_window(self, label: str) -> DriftWindow | None:
        reference = self._references.get(label)
        if reference is None:
            return None
        return DriftWindow(reference, self._drift_window, self._drift_min_samples)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic
