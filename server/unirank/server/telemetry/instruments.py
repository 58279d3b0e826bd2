"""The OpenTelemetry instruments of one server: the histograms recorded per RPC, stage and batch,
and the observable instruments read from the in-process counters when a metric reader collects.

Points carry the task label and what the convention asks for; the profile, service and version are
resource attributes (one process serves one profile). The SDK spends most of a record on attributes
(~10 us for three), so points carry no more than they need, and each label set is built once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
from opentelemetry.metrics import CallbackOptions, Observation

from unirank.server.cache import MemoryUsage
from unirank.server.telemetry import semconv
from unirank.server.telemetry.kpi import create_kpi_instruments
from unirank.server.telemetry.rpc import MethodInfo
from unirank.server.telemetry.stats import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_S, ServingStats


class Instruments:
    """The instruments on ``meter`` (None: no meter, and every record is a no-op).

    The observable instruments read the server's counters, which the telemetry facade owns and
    updates: ``stats``, ``reload_outcomes``, ``memory`` and ``gate_verdicts`` are shared, not copied.
    """

    def __init__(
        self,
        meter: Any | None,
        stats: ServingStats,
        methods: Mapping[str, MethodInfo],
        served_tasks: tuple[str, ...],
        reload_outcomes: dict[str, int],
        memory: Mapping[tuple[str, str], Callable[[], MemoryUsage]],
        gate_verdicts: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        self._stats = stats
        self._methods = methods
        self._served_tasks = served_tasks
        self._reload_outcomes = reload_outcomes
        self._memory = memory
        self._gate_verdicts = gate_verdicts if gate_verdicts is not None else {}
        self.model_attributes: dict[str, str] = {}
        """Labels of ``unirank.model.info``: the model version, backend and device now serving."""
        self._attribute_cache: dict[tuple[str, ...], dict[str, Any]] = {}
        self._call_duration: Any = None
        self._stage_duration: Any = None
        self._queue_wait: Any = None
        self._batch_size: Any = None
        if meter is not None:
            self._create(meter)

    @property
    def batch_metrics(self) -> bool:
        """Whether per-batch metrics are recorded (there is a meter)."""
        return self._queue_wait is not None

    # -- recording

    def record_call(
        self, method: MethodInfo, task: str, code: grpc.StatusCode, duration_s: float, server_error: bool
    ) -> None:
        """One finished RPC in ``rpc.server.call.duration``."""
        if self._call_duration is not None:
            self._call_duration.record(duration_s, self._rpc_attributes(method, task, code, server_error))

    def _rpc_attributes(
        self, method: MethodInfo, task: str, code: grpc.StatusCode, server_error: bool
    ) -> dict[str, Any]:
        key = (method.short_name, task, code.name)
        attributes = self._attribute_cache.get(key)
        if attributes is None:
            attributes = {
                semconv.RPC_SYSTEM_NAME: "grpc",
                semconv.RPC_METHOD: method.full_name,
                semconv.RPC_RESPONSE_STATUS_CODE: code.name,
                semconv.TASK_TYPE: task,
            }
            if server_error:
                attributes[semconv.ERROR_TYPE] = code.name
            self._attribute_cache[key] = attributes
        return attributes

    def record_stages(self, task: str, stages: Iterable[tuple[str, float]]) -> None:
        histogram = self._stage_duration
        if histogram is None:
            return
        for stage, milliseconds in stages:
            histogram.record(milliseconds / 1000.0, self._task_attributes(task, stage))

    def record_batch(self, size: int, waits: Iterable[tuple[str, float]]) -> None:
        """One executed batch of ``size``: the queue wait of each member, by the member's task."""
        if self._queue_wait is None:
            return
        for task, wait in waits:
            attributes = self._task_attributes(task)
            self._queue_wait.record(wait, attributes)
            self._batch_size.record(size, attributes)

    def _task_attributes(self, task: str, stage: str = "") -> dict[str, Any]:
        key = ("task", task, stage)
        attributes = self._attribute_cache.get(key)
        if attributes is None:
            attributes = {semconv.TASK_TYPE: task}
            if stage:
                attributes[semconv.STAGE] = stage
            self._attribute_cache[key] = attributes
        return attributes

    # -- the instruments

    def _create(self, meter: Any) -> None:
        self._call_duration = meter.create_histogram(
            semconv.RPC_SERVER_CALL_DURATION,
            unit="s",
            description="Duration of incoming RPCs, by use-case and status code.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self._stage_duration = meter.create_histogram(
            "unirank.stage.duration",
            unit="s",
            description="Duration of each pipeline stage of a ranked request, by use-case.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self._queue_wait = meter.create_histogram(
            "unirank.batch.queue_wait",
            unit="s",
            description="Time a request waited in the batch queue before its batch ran, by use-case.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self._batch_size = meter.create_histogram(
            "unirank.batch.size",
            unit="{request}",
            description="Size of the executed batch each request ran in, by the request's use-case.",
            explicit_bucket_boundaries_advisory=BATCH_SIZE_BUCKETS,
        )
        meter.create_observable_counter(
            "unirank.server.requests",
            callbacks=[self._observe_requests],
            unit="{request}",
            description="Finished RPCs by use-case, method and status code.",
        )
        meter.create_observable_up_down_counter(
            "unirank.server.active_requests",
            callbacks=[self._observe_in_flight],
            unit="{request}",
            description="RPCs being handled now, by use-case.",
        )
        meter.create_observable_counter(
            "unirank.rankings",
            callbacks=[self._observe_rankings],
            unit="{request}",
            description="Ranked requests by use-case and what answered them (model, cache, fallback).",
        )
        meter.create_observable_counter(
            "unirank.fallbacks",
            callbacks=[self._observe_fallbacks],
            unit="{request}",
            description="Ranked requests answered by the use-case's fallback, by reason.",
        )
        meter.create_observable_counter(
            "unirank.cache.lookups",
            callbacks=[self._observe_cache],
            unit="{request}",
            description="Response cache lookups by use-case and result (hit, miss).",
        )
        meter.create_observable_counter(
            "unirank.model.reloads",
            callbacks=[self._observe_reloads],
            unit="{reload}",
            description="Attempts to load a new artifact version, by outcome: loaded, refused, "
            "incomplete (retried), unreadable (the repository changed while read), poll_error.",
        )
        meter.create_observable_counter(
            "unirank.gate.decisions",
            callbacks=[self._observe_gate],
            unit="{decision}",
            description="The offline promotion gate's verdicts on new versions, by use-case and "
            "verdict (pass, refuse); a version is refused when any served use-case is.",
        )
        meter.create_observable_gauge(
            "unirank.memory.bytes",
            callbacks=[self._observe_memory_bytes],
            unit="By",
            description="Estimated memory held by each bounded in-process store (response cache per "
            "use-case, feature store), against its profile's max_bytes.",
        )
        meter.create_observable_gauge(
            "unirank.memory.entries",
            callbacks=[self._observe_memory_entries],
            unit="{entry}",
            description="Entries in each bounded in-process store (cached answers, users).",
        )
        meter.create_observable_counter(
            "unirank.memory.evictions",
            callbacks=[self._observe_memory_evictions],
            unit="{entry}",
            description="Entries dropped from each bounded in-process store, by reason: expired "
            "(time-to-live) or capacity (least recently used, past max_bytes or the entry bound).",
        )
        meter.create_observable_gauge(
            "unirank.model.info",
            callbacks=[self._observe_model],
            unit="1",
            description="1 per served use-case, labelled with the model version, backend and device.",
        )
        meter.create_observable_gauge(
            "unirank.score.drift.psi",
            callbacks=[self._observe_drift],
            unit="1",
            description="PSI of the live top-score distribution against the artifact's offline "
            "reference, per use-case (> 0.25: a significant shift).",
        )
        create_kpi_instruments(meter, self._stats.kpis)

    # Callbacks run on the exporter's thread: they read copies of the loop's counters.

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        names = {info.short_name: info.full_name for info in self._methods.values()}
        for task, stats in self._stats.items():
            for (method, code), count in stats.rpcs.copy().items():
                yield Observation(
                    count,
                    {
                        semconv.TASK_TYPE: task,
                        semconv.RPC_METHOD: names.get(method, method),
                        semconv.RPC_RESPONSE_STATUS_CODE: code,
                    },
                )

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        for task, stats in self._stats.items():
            yield Observation(stats.in_flight, self._task_attributes(task))

    def _observe_rankings(self, options: CallbackOptions) -> Iterable[Observation]:
        for task, stats in self._stats.items():
            for served_by, count in stats.rankings.copy().items():
                if count:
                    yield Observation(count, {**self._task_attributes(task), semconv.SERVED_BY: served_by})

    def _observe_fallbacks(self, options: CallbackOptions) -> Iterable[Observation]:
        for task, stats in self._stats.items():
            for reason, count in stats.fallbacks.copy().items():
                yield Observation(count, {**self._task_attributes(task), semconv.FALLBACK_REASON: reason})

    def _observe_cache(self, options: CallbackOptions) -> Iterable[Observation]:
        for task, stats in self._stats.items():
            if stats.cache_hits or stats.cache_misses:
                attributes = self._task_attributes(task)
                yield Observation(stats.cache_hits, {**attributes, semconv.CACHE_RESULT: "hit"})
                yield Observation(stats.cache_misses, {**attributes, semconv.CACHE_RESULT: "miss"})

    def _observe_reloads(self, options: CallbackOptions) -> Iterable[Observation]:
        for outcome, count in self._reload_outcomes.copy().items():
            yield Observation(count, {semconv.RELOAD_OUTCOME: outcome})

    def _observe_gate(self, options: CallbackOptions) -> Iterable[Observation]:
        for (task, verdict), count in dict(self._gate_verdicts).items():
            yield Observation(count, {**self._task_attributes(task), semconv.GATE_VERDICT: verdict})

    def _memory_usage(self) -> Iterable[tuple[dict[str, Any], MemoryUsage]]:
        for (store, task), usage in list(self._memory.items()):
            attributes = {semconv.MEMORY_STORE: store}
            if task:
                attributes[semconv.TASK_TYPE] = task
            yield attributes, usage()

    def _observe_memory_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        for attributes, usage in self._memory_usage():
            yield Observation(usage.bytes, attributes)

    def _observe_memory_entries(self, options: CallbackOptions) -> Iterable[Observation]:
        for attributes, usage in self._memory_usage():
            yield Observation(usage.entries, attributes)

    def _observe_memory_evictions(self, options: CallbackOptions) -> Iterable[Observation]:
        for attributes, usage in self._memory_usage():
            yield Observation(usage.expired, {**attributes, semconv.EVICTION_REASON: "expired"})
            yield Observation(usage.evicted, {**attributes, semconv.EVICTION_REASON: "capacity"})

    def _observe_model(self, options: CallbackOptions) -> Iterable[Observation]:
        for task in self._served_tasks:
            yield Observation(1, {**self._task_attributes(task), **self.model_attributes})

    def _observe_drift(self, options: CallbackOptions) -> Iterable[Observation]:
        for task, stats in self._stats.items():
            if stats.drift is not None:
                value = stats.drift.psi()
                if value is not None:
                    yield Observation(value, self._task_attributes(task))
