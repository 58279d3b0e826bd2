"""Online KPIs per use-case: answers issued (impressions) and the feedback attributed to them.

Counted in process like :mod:`unirank.server.telemetry.stats` (a few integer increments per answer
or event) and exported three ways: OpenTelemetry observable counters (``unirank.kpi.*``),
``GetServingStats`` (``TaskServingStats.kpis``) and so ``unirank monitor``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from unirank.server.telemetry import semconv

STABLE_ARM = "stable"
"""The arm of every answer until canary releases split traffic."""

MAX_MODEL_VERSIONS = 3
"""Model versions whose counters are kept: the serving one and the last two before it (feedback on
their answers still arrives after a reload). Older ones are dropped, so hourly refits over months
never grow the label set."""

CLICK_POSITIONS = 20
"""Click positions counted one by one; clicks further down share one overflow bucket."""

VIEW_EVENT_TYPE = 5
"""``unirank.v1.EVENT_TYPE_IMPRESSION``: the item was shown (no engagement: never a feature)."""

EVENT_KINDS: dict[int, str] = {
    0: "play",  # EVENT_TYPE_UNSPECIFIED: logged as a play by the feature store too
    1: "play",  # EVENT_TYPE_PLAY
    2: "click",  # EVENT_TYPE_CLICK
    3: "click",  # EVENT_TYPE_SEARCH_CLICK
    4: "click",  # EVENT_TYPE_NOTIFICATION_OPEN
    VIEW_EVENT_TYPE: "view",
    6: "play",  # EVENT_TYPE_PLAY_START
    7: "play_complete",  # EVENT_TYPE_PLAY_COMPLETE
}
"""``unirank.v1.EventType`` value -> the KPI it counts towards."""

KINDS = ("click", "play", "play_complete", "view")

UNATTRIBUTED_REASONS = ("unknown_impression", "item_not_in_answer", "duplicate", "store_unavailable")
"""Why an event naming an impression was not attributed: the impression was never issued or its
attribution window passed; the answer did not contain the item; its ``event_id`` was already
counted; the impression store could not be read."""


def position_label(position: int) -> str:
    """The bounded label of a 1-based click position: ``"1"`` .. ``"20"``, then ``"21+"``."""
    return str(position) if position <= CLICK_POSITIONS else f"{CLICK_POSITIONS + 1}+"


@dataclass
class KpiStats:
    """Counters of one (task, model version, arm)."""

    impressions: int = 0
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    engagement_seconds: float = 0.0
    click_positions: list[int] = field(default_factory=lambda: [0] * (CLICK_POSITIONS + 1))
    """Clicks at positions 1..CLICK_POSITIONS, then one overflow entry."""

    @property
    def clicks(self) -> int:
        return self.events["click"]

    @property
    def plays(self) -> int:
        return self.events["play"]

    def ratio(self, value: float) -> float | None:
        return value / self.impressions if self.impressions else None


Key = tuple[str, str, str]
"""(task, model version, arm)."""


class KpiCounters:
    """KPI counters of one process since it started; single-threaded (the event loop), read by
    exporter threads through copies."""

    def __init__(self, max_versions: int = MAX_MODEL_VERSIONS) -> None:
        self._stats: dict[Key, KpiStats] = {}
        self._versions: dict[str, None] = {}
        """Model versions with counters, oldest first."""
        self._max_versions = max_versions
        self.unattributed: dict[str, int] = {}

    def of(self, task: str, model_version: str, arm: str) -> KpiStats:
        key = (task, model_version, arm)
        stats = self._stats.get(key)
        if stats is None:
            if model_version not in self._versions:
                self._versions[model_version] = None
                while len(self._versions) > self._max_versions:
                    oldest = next(iter(self._versions))
                    del self._versions[oldest]
                    self._stats = {k: v for k, v in self._stats.items() if k[1] != oldest}
            stats = self._stats[key] = KpiStats()
        return stats

    def impression(self, task: str, model_version: str, arm: str) -> None:
        self.of(task, model_version, arm).impressions += 1

    def attributed(
        self, task: str, model_version: str, arm: str, event_type: int, position: int, engagement_s: float
    ) -> None:
        stats = self.of(task, model_version, arm)
        kind = EVENT_KINDS.get(event_type, "play")
        stats.events[kind] += 1
        stats.engagement_seconds += engagement_s
        if kind == "click":
            stats.click_positions[min(position, CLICK_POSITIONS + 1) - 1] += 1

    def unattributable(self, reason: str, count: int = 1) -> None:
        self.unattributed[reason] = self.unattributed.get(reason, 0) + count

    def items(self) -> Iterator[tuple[Key, KpiStats]]:
        return iter(sorted(self._stats.copy().items()))

    def for_task(self, task: str) -> list[tuple[str, str, KpiStats]]:
        """(model version, arm, counters) of ``task``."""
        return [(version, arm, stats) for (name, version, arm), stats in self.items() if name == task]


def create_kpi_instruments(meter: Any, kpis: KpiCounters) -> None:
    """The ``unirank.kpi.*`` observable counters, read from ``kpis`` at each collection. Labels are
    bounded: task, model version (the loaded ones), arm, event kind, position up to ``21+``, reason."""

    def labels(key: Key) -> dict[str, Any]:
        task, version, arm = key
        return {semconv.TASK_TYPE: task, semconv.MODEL_VERSION: version, semconv.ARM: arm}

    def impressions(options: CallbackOptions) -> Iterable[Observation]:
        for key, stats in kpis.items():
            yield Observation(stats.impressions, labels(key))

    def events(options: CallbackOptions) -> Iterable[Observation]:
        for key, stats in kpis.items():
            for kind, count in stats.events.copy().items():
                yield Observation(count, {**labels(key), semconv.KPI_EVENT: kind})

    def engagement(options: CallbackOptions) -> Iterable[Observation]:
        for key, stats in kpis.items():
            yield Observation(stats.engagement_seconds, labels(key))

    def positions(options: CallbackOptions) -> Iterable[Observation]:
        for key, stats in kpis.items():
            for index, count in enumerate(list(stats.click_positions)):
                if count:
                    yield Observation(count, {**labels(key), semconv.KPI_POSITION: position_label(index + 1)})

    def unattributed(options: CallbackOptions) -> Iterable[Observation]:
        for reason, count in kpis.unattributed.copy().items():
            yield Observation(count, {semconv.KPI_UNATTRIBUTED_REASON: reason})

    instruments = (
        ("impressions", impressions, "{impression}", "Answers issued (each one an impression)"),
        ("events", events, "{event}", "Attributed events by kind (click, play, play_complete, view)"),
        ("engagement", engagement, "s", "Engagement seconds of the attributed events"),
        ("click_positions", positions, "{event}", "Attributed clicks by 1-based position (21+ pooled)"),
        ("unattributed", unattributed, "{event}", "Events naming an impression that were not attributed, "
         "by reason: unknown_impression, item_not_in_answer, duplicate, store_unavailable"),
    )  # fmt: skip
    for name, callback, unit, description in instruments:
        meter.create_observable_counter(
            f"unirank.kpi.{name}",
            callbacks=[callback],
            unit=unit,
            description=description
            + ("" if name == "unattributed" else ", by use-case, model version and arm."),
        )
