"""``unirank monitor``: per-task traffic, latency, errors, fallbacks and drift of a running server.

Reads ``GetServingStats`` (cumulative counters and call-duration buckets since the server
started). One reading describes the whole uptime; with ``--watch`` every update describes the
interval since the previous one, the way a Prometheus ``rate()`` would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import grpc

from unirank.client._common import DEFAULT_TIMEOUT_S, CallSettings, channel_credentials
from unirank.client.errors import error_from_rpc
from unirank.v1 import recommender_pb2 as pb
from unirank.v1 import recommender_pb2_grpc as pb_grpc

PSI_ALERT = 0.25
NO_TASK_LABEL = "unspecified"
"""The task label of RPCs that name no use-case (GetModelInfo, RecordEvents, malformed requests),
as the contract (TaskServingStats) defines it; the table shows it as ``NO_TASK_ROW``."""
NO_TASK_ROW = "(no use-case)"
"""PSI above which a task's score distribution has shifted significantly (marked ``!``)."""


@dataclass(frozen=True)
class TaskCounters:
    """Cumulative counters of one task label, as the server reported them."""

    task: str
    rpcs_by_code: dict[str, int] = field(default_factory=dict)
    latency_bucket_counts: tuple[int, ...] = ()
    latency_sum_s: float = 0.0
    in_flight: int = 0
    served_by_model: int = 0
    served_by_cache: int = 0
    served_by_fallback: int = 0
    fallbacks_by_reason: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    has_reference: bool = False
    drift_samples: int = 0
    psi: float | None = None
    """None until the server's drift window holds enough scores."""
    impressions: int = 0
    """Answers issued (every model version and arm together)."""
    clicks: int = 0
    """Attributed clicks."""
    plays: int = 0
    """Attributed play starts."""
    engagement_seconds: float = 0.0
    """Engagement seconds of the attributed events."""


@dataclass(frozen=True)
class ServingStats:
    """One ``GetServingStats`` reading."""

    model_version: str
    profile: str
    uptime_s: float
    latency_bucket_bounds_s: tuple[float, ...]
    tasks: dict[str, TaskCounters]
    unattributed_by_reason: dict[str, int] = field(default_factory=dict)
    """Events naming an impression that were not attributed, by reason."""


def decode_stats(message: pb.GetServingStatsResponse) -> ServingStats:
    tasks = {}
    for entry in message.tasks:
        drift = entry.drift
        tasks[entry.task] = TaskCounters(
            task=entry.task,
            rpcs_by_code=dict(entry.rpcs_by_code),
            latency_bucket_counts=tuple(entry.latency_bucket_counts),
            latency_sum_s=entry.latency_sum_s,
            in_flight=entry.in_flight,
            served_by_model=entry.served_by_model,
            served_by_cache=entry.served_by_cache,
            served_by_fallback=entry.served_by_fallback,
            fallbacks_by_reason=dict(entry.fallbacks_by_reason),
            cache_hits=entry.cache_hits,
            cache_misses=entry.cache_misses,
            has_reference=drift.has_reference,
            drift_samples=drift.window_samples,
            psi=drift.psi if drift.HasField("psi") else None,
            impressions=sum(k.impressions for k in entry.kpis),
            clicks=sum(k.clicks for k in entry.kpis),
            plays=sum(k.plays for k in entry.kpis),
            engagement_seconds=sum(k.engagement_seconds_sum for k in entry.kpis),
        )
    return ServingStats(
        model_version=message.model_version,
        profile=message.profile,
        uptime_s=message.uptime_s,
        latency_bucket_bounds_s=tuple(message.latency_bucket_bounds_s),
        tasks=tasks,
        unattributed_by_reason=dict(message.unattributed_events_by_reason),
    )


class OperatorChannel:
    """A channel to one server for an operator's RPCs (stats, rollouts): grpcio + protobuf only,
    like the client, with its connection settings."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        tls: bool = False,
        root_certificates: bytes | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        bearer_token: str | None = None,
    ) -> None:
        self._settings = CallSettings.create(timeout=timeout, bearer_token=bearer_token, metadata=())
        secure = channel_credentials(credentials, root_certificates, tls)
        self._channel = (
            grpc.secure_channel(target, secure) if secure is not None else grpc.insecure_channel(target)
        )
        self._stub = pb_grpc.RecommenderServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class StatsClient(OperatorChannel):
    """A channel to one server, for ``GetServingStats`` only."""

    def fetch(self) -> ServingStats:
        try:
            response = self._stub.GetServingStats(
                pb.GetServingStatsRequest(),
                timeout=self._settings.timeout(None),
                metadata=self._settings.call_metadata(),
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return decode_stats(response)


# -- what the table shows ---------------------------------------------------------------------


def percentile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a bucketed distribution, interpolated linearly inside its
    bucket as Prometheus' ``histogram_quantile`` does; None without observations.

    ``counts`` has one entry per bound plus the overflow bucket; a quantile that falls in the
    overflow is reported as the last bound (a lower limit).
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(counts):
        if count and cumulative + count >= rank:
            if index >= len(bounds):
                return bounds[-1] if bounds else None
            lower = bounds[index - 1] if index > 0 else 0.0
            return lower + (bounds[index] - lower) * max(0.0, rank - cumulative) / count
        cumulative += count
    return bounds[-1] if bounds else None


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole > 0 else None


@dataclass(frozen=True)
class TaskView:
    """One row of the monitor: a task label over an interval."""

    task: str
    rpcs: int
    rpcs_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    error_rate: float | None
    """Share of RPCs that did not end OK."""
    codes: dict[str, int]
    rankings: int
    fallback_rate: float | None
    fallbacks_by_reason: dict[str, int]
    cache_hit_rate: float | None
    in_flight: int
    psi: float | None
    drift_samples: int
    has_reference: bool
    impressions: int = 0
    ctr: float | None = None
    """Attributed clicks per impression."""
    play_rate: float | None = None
    """Attributed play starts per impression."""
    engagement_s: float | None = None
    """Mean attributed engagement seconds per impression."""


def _minus(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    out = {key: value - before.get(key, 0) for key, value in now.items()}
    return {key: value for key, value in out.items() if value}


def summarize(current: ServingStats, previous: ServingStats | None = None) -> list[TaskView]:
    """Rows for ``current``: since start, or since ``previous`` when given (watch mode).

    Drift and in-flight are states, not counters: they are always the current values.
    """
    elapsed = current.uptime_s - (previous.uptime_s if previous is not None else 0.0)
    bounds = current.latency_bucket_bounds_s
    rows = []
    for task, now in sorted(current.tasks.items()):
        before = previous.tasks.get(task) if previous is not None else None
        base = before or TaskCounters(task, latency_bucket_counts=(0,) * len(now.latency_bucket_counts))
        codes = _minus(now.rpcs_by_code, base.rpcs_by_code)
        buckets = [
            a - b
            for a, b in zip(
                now.latency_bucket_counts,
                base.latency_bucket_counts or (0,) * len(now.latency_bucket_counts),
                strict=True,
            )
        ]
        rpcs = sum(codes.values())
        served = {
            "model": now.served_by_model - base.served_by_model,
            "cache": now.served_by_cache - base.served_by_cache,
            "fallback": now.served_by_fallback - base.served_by_fallback,
        }
        rankings = sum(served.values())
        lookups = (now.cache_hits - base.cache_hits) + (now.cache_misses - base.cache_misses)
        impressions = now.impressions - base.impressions
        if previous is not None and not rpcs and not rankings and not now.in_flight:
            continue  # quiet during this interval
        rows.append(
            TaskView(
                task=task,
                rpcs=rpcs,
                rpcs_per_s=rpcs / elapsed if elapsed > 0 else 0.0,
                p50_ms=_ms(percentile(bounds, buckets, 0.50)),
                p90_ms=_ms(percentile(bounds, buckets, 0.90)),
                p99_ms=_ms(percentile(bounds, buckets, 0.99)),
                error_rate=_ratio(rpcs - codes.get("OK", 0), rpcs),
                codes=codes,
                rankings=rankings,
                fallback_rate=_ratio(served["fallback"], rankings),
                fallbacks_by_reason=_minus(now.fallbacks_by_reason, base.fallbacks_by_reason),
                cache_hit_rate=_ratio(now.cache_hits - base.cache_hits, lookups),
                in_flight=now.in_flight,
                psi=now.psi,
                drift_samples=now.drift_samples,
                has_reference=now.has_reference,
                impressions=impressions,
                ctr=_ratio(now.clicks - base.clicks, impressions),
                play_rate=_ratio(now.plays - base.plays, impressions),
                engagement_s=(now.engagement_seconds - base.engagement_seconds) / impressions
                if impressions
                else None,
            )
        )
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _psi(view: TaskView) -> str:
    if not view.has_reference:
        return "-"
    if view.psi is None:
        return f"n={view.drift_samples}"
    return f"{view.psi:.3f}{' !' if view.psi > PSI_ALERT else ''}"


def format_views(stats: ServingStats, views: Sequence[TaskView], interval_s: float | None) -> str:
    """A header with the model and the interval, then one row per task label."""
    span = f"last {interval_s:.1f} s" if interval_s is not None else f"since start ({stats.uptime_s:.0f} s)"
    lines = [f"model={stats.model_version or '?'}  profile={stats.profile or '?'}  window={span}"]
    if not views:
        lines.append("(no traffic)")
        return "\n".join(lines)
    header = [
        "task",
        "rpcs",
        "rps",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "fallback",
        "cache hit",
        "inflight",
        "psi",
        "CTR",
        "play rate",
        "engage s",
    ]
    rows = [header]
    for view in views:
        rows.append(
            [
                NO_TASK_ROW if view.task == NO_TASK_LABEL else view.task,
                str(view.rpcs),
                _number(view.rpcs_per_s, 1),
                _number(view.p50_ms),
                _number(view.p90_ms),
                _number(view.p99_ms),
                _percent(view.error_rate),
                _percent(view.fallback_rate),
                _percent(view.cache_hit_rate),
                str(view.in_flight),
                _psi(view),
                _percent(view.ctr),
                _percent(view.play_rate),
                _number(view.engagement_s, 1),
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    details = []
    if any(view.task == NO_TASK_LABEL for view in views):
        details.append(
            f"{NO_TASK_ROW}: calls that name no use-case (GetModelInfo, RecordEvents, malformed ones)"
        )
    if any(view.has_reference for view in views):
        details.append(
            "psi: drift of the served top score from the model's reference (population stability "
            f"index; ! above {PSI_ALERT:g}); n=K: only K scores in the window so far, too few to judge"
        )
    if any(view.impressions for view in views):
        details.append(
            "CTR, play rate, engage s: clicks, play starts and engagement seconds attributed to the "
            "answers (RecordEvents events naming their impression_id), per answer issued"
        )
    if stats.unattributed_by_reason:
        details.append(
            "unattributed events: "
            + ", ".join(f"{r}={n}" for r, n in sorted(stats.unattributed_by_reason.items()))
        )
    for view in views:
        failed = {code: n for code, n in view.codes.items() if code != "OK"}
        if failed:
            details.append(f"{view.task} errors: " + ", ".join(f"{c}={n}" for c, n in sorted(failed.items())))
        if view.fallbacks_by_reason:
            details.append(
                f"{view.task} fallbacks: "
                + ", ".join(f"{r}={n}" for r, n in sorted(view.fallbacks_by_reason.items()))
            )
    return "\n".join(lines + details)


def views_as_json(stats: ServingStats, views: Sequence[TaskView], interval_s: float | None) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "model_version": stats.model_version,
        "profile": stats.profile,
        "uptime_s": stats.uptime_s,
        "interval_s": interval_s,
        "tasks": [asdict(view) for view in views],
    }
