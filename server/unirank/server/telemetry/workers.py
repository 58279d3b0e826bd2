"""One server, one set of metrics, whatever ``--workers`` says.

* Prometheus: every worker serves its own exporter on a port of its choosing and writes that port
  into the group's shared array; the supervisor alone listens on the profile's Prometheus port and
  answers each scrape with every worker's series, labelled ``worker="<index>"`` (sum over it in
  queries). A worker never binds the shared port, so none of them fights over it.
* ``GetServingStats`` / ``unirank monitor``: each worker publishes a snapshot of its counters into
  the group's directory (atomically, every ``STATS_PUBLISH_INTERVAL_S``); whichever worker a call
  reaches answers with its own fresh counters plus the others' snapshots, merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from unirank.server.telemetry.drift import psi
from unirank.v1 import recommender_pb2 as pb

log = logging.getLogger(__name__)

STATS_PUBLISH_INTERVAL_S = 0.5
"""How often a worker publishes its counters for the others to answer with (their staleness)."""
SCRAPE_TIMEOUT_S = 2.0
"""How long the supervisor waits for one worker's exporter before answering without it."""


# --- Prometheus: one endpoint over every worker's exporter (runs in the supervisor) -------------


def merge_expositions(texts: Sequence[tuple[str, str]]) -> bytes:
    """Prometheus text expositions of (worker label, text) -> one exposition, each sample labelled
    with its worker and each metric family written once."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    for worker, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            merged.samples.extend(
                sample._replace(labels={**sample.labels, "worker": worker}) for sample in family.samples
            )

    class _Merged:
        def collect(self) -> Iterable[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return bytes(generate_latest(registry))


class MetricsAggregator:
    """The supervisor's Prometheus endpoint: scrapes each worker whose port is known, merges."""

    def __init__(self, host: str, port: int, worker_ports: Callable[[], Sequence[int]]) -> None:
        self._worker_ports = worker_ports
        self._host = host
        aggregator = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/", "/metrics"):
                    self.send_error(404)
                    return
                body = aggregator.scrape()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                pass

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="unirank-metrics", daemon=True
        )
        self._thread.start()

    def scrape(self) -> bytes:
        texts = []
        for index, port in enumerate(self._worker_ports()):
            if port <= 0:  # not started yet, or restarting
                continue
            url = f"http://{_connect_host(self._host)}:{port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
                    texts.append((str(index), reply.read().decode()))
            except OSError as exc:
                log.debug("worker %d's exporter did not answer: %s", index, exc)
        return merge_expositions(texts)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host


# --- GetServingStats: every worker's counters, merged (runs in each worker) -----------------------


class StatsExchange:
    """The group directory where each worker leaves its latest ``GetServingStatsResponse``."""

    def __init__(self, directory: str | Path, index: int) -> None:
        self._directory = Path(directory)
        self._index = index

    def publish(self, message: pb.GetServingStatsResponse) -> None:
        path = self._directory / f"worker-{self._index}.pb"
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_bytes(message.SerializeToString())
        os.replace(staging, path)  # a reader sees the old snapshot or the new one, never half

    def peers(self) -> list[pb.GetServingStatsResponse]:
        """The other workers' latest snapshots (an unreadable one is skipped)."""
        found = []
        for path in sorted(self._directory.glob("worker-*.pb")):
            if path.name == f"worker-{self._index}.pb":
                continue
            with contextlib.suppress(OSError, DecodeError):
                found.append(pb.GetServingStatsResponse.FromString(path.read_bytes()))
        return found


async def publish_stats(exchange: StatsExchange, snapshot: Callable[[], pb.GetServingStatsResponse]) -> None:
    """Publish this worker's counters every ``STATS_PUBLISH_INTERVAL_S`` until cancelled."""
    while True:
        try:
            exchange.publish(snapshot())
        except OSError as exc:  # a full or vanished directory: the others answer without us
            log.debug("cannot publish serving stats: %s", exc)
        await asyncio.sleep(STATS_PUBLISH_INTERVAL_S)


def merge_stats(
    own: pb.GetServingStatsResponse, peers: Sequence[pb.GetServingStatsResponse], drift_min_samples: int
) -> pb.GetServingStatsResponse:
    """``own`` plus ``peers``: counts add up, uptime is the longest, drift windows pool their
    samples (PSI recomputed once the pooled window holds ``drift_min_samples``)."""
    merged = pb.GetServingStatsResponse()
    merged.CopyFrom(own)
    by_task = {entry.task: entry for entry in merged.tasks}
    for peer in peers:
        merged.uptime_s = max(merged.uptime_s, peer.uptime_s)
        if list(peer.latency_bucket_bounds_s) != list(merged.latency_bucket_bounds_s):
            continue  # another build's buckets: not addable
        for theirs in peer.tasks:
            mine = by_task.get(theirs.task)
            if mine is None:
                mine = by_task[theirs.task] = merged.tasks.add()
                mine.CopyFrom(theirs)
                continue
            _add_task(mine, theirs, drift_min_samples)
    for peer in peers:
        for reason, count in peer.unattributed_events_by_reason.items():
            merged.unattributed_events_by_reason[reason] += count
    ordered = sorted(merged.tasks, key=lambda entry: entry.task)
    del merged.tasks[:]
    merged.tasks.extend(ordered)
    return merged


def _add_task(mine: pb.TaskServingStats, theirs: pb.TaskServingStats, drift_min_samples: int) -> None:
    for code, count in theirs.rpcs_by_code.items():
        mine.rpcs_by_code[code] += count
    for reason, count in theirs.fallbacks_by_reason.items():
        mine.fallbacks_by_reason[reason] += count
    counts = [a + b for a, b in zip(mine.latency_bucket_counts, theirs.latency_bucket_counts, strict=False)]
    del mine.latency_bucket_counts[:]
    mine.latency_bucket_counts.extend(counts)
    mine.latency_sum_s += theirs.latency_sum_s
    for name in ("in_flight", "served_by_model", "served_by_cache", "served_by_fallback"):
        setattr(mine, name, getattr(mine, name) + getattr(theirs, name))
    mine.cache_hits += theirs.cache_hits
    mine.cache_misses += theirs.cache_misses
    _pool_drift(mine.drift, theirs.drift, drift_min_samples)
    _add_kpis(mine, theirs)


def _add_kpis(mine: pb.TaskServingStats, theirs: pb.TaskServingStats) -> None:
    """Per (model version, arm): counts add up, click positions bucket by bucket."""
    by_key = {(k.model_version, k.arm): k for k in mine.kpis}
    for kpi in theirs.kpis:
        own = by_key.get((kpi.model_version, kpi.arm))
        if own is None:
            mine.kpis.add().CopyFrom(kpi)
            continue
        for name in ("impressions", "clicks", "plays", "play_completes", "views", "engagement_seconds_sum"):
            setattr(own, name, getattr(own, name) + getattr(kpi, name))
        positions = [a + b for a, b in zip(own.click_positions, kpi.click_positions, strict=False)]
        del own.click_positions[:]
        own.click_positions.extend(positions)


def _pool_drift(mine: pb.ScoreDrift, theirs: pb.ScoreDrift, drift_min_samples: int) -> None:
    if not theirs.has_reference or not theirs.window_samples:
        return
    if not mine.has_reference or not mine.window_samples:
        mine.CopyFrom(theirs)
        return
    if list(mine.bin_edges) != list(theirs.bin_edges):
        return  # another model version's reference: not poolable
    total = mine.window_samples + theirs.window_samples
    live = [
        (a * mine.window_samples + b * theirs.window_samples) / total
        for a, b in zip(mine.live_fractions, theirs.live_fractions, strict=True)
    ]
    del mine.live_fractions[:]
    mine.live_fractions.extend(live)
    mine.window_samples = total
    if total >= drift_min_samples:
        mine.psi = psi(list(mine.reference_fractions), live)
    else:
        mine.ClearField("psi")
