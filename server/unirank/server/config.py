"""Deployment profiles: typed, validated TOML that decides how one artifact is served.

A profile fails fast at load: an unknown key, a bad value or an unknown rule / task name raises
:class:`ProfileError` naming the file, the key path and the reason.

One room of one concern although over 500 lines: it is the profile schema, every section with
its documented knobs, which ``make docs`` renders into docs/profiles.md as one reference; split by
section it would scatter that reference and gain nothing, since nothing here runs at serve time.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unirank.artifact.tasks import TASKS
from unirank.server.rules import validate_rule_configs


class ProfileError(Exception):
    """The profile file is unreadable or invalid."""


class _Strict(BaseModel):
    # Typos must fail loudly, never be ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class BatchingConfig(_Strict):
    """Dynamic batching: concurrent requests scored in one model call (either backend)."""

    enabled: bool = False
    """Collect concurrent requests into one model call."""
    max_batch_size: int = Field(32, ge=1, le=4096)
    """Most requests (contexts) in one executed batch."""
    max_queue_delay_ms: float = Field(2.0, ge=0.0, le=1000.0)
    """Longest a request waits for a batch to fill before the batch runs anyway. 0: no waiting on
    purpose; a batch is whatever waits when the model frees up."""
    max_queue_size: int = Field(1024, ge=1, le=1_000_000)
    """Requests allowed to wait; beyond it new requests get RESOURCE_EXHAUSTED."""


class ModelSection(_Strict):
    """Which backend scores, where, and with how many threads."""

    backend: Literal["onnxruntime", "torch"] = "onnxruntime"
    """``onnxruntime`` (lowest latency, never imports torch) or ``torch`` (batched, CPU or CUDA)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """``cuda`` falls back to CPU with a logged warning where no GPU is present."""
    intra_op_threads: int = Field(1, ge=1, le=256)
    """Threads inside one model call (ONNX Runtime intra-op / torch intra-op)."""
    inference_workers: int = Field(2, ge=0, le=64)
    """Threads that run model calls off the event loop. 0 runs ONNX Runtime inline on the loop:
    no thread hand-off (lowest latency one call at a time), but the loop waits for every call,
    and a use-case's ``timeout_ms`` cannot interrupt one (no timer is set; torch always runs off
    the loop)."""
    inline_when_alone: bool = True
    """With ONNX Runtime on scoring threads: a model call made while no other call is open in the
    server runs on the event loop instead (no hand-off to a scoring thread and back, which costs
    more than the model call itself at a few hundred candidates). A call that finds another one
    open goes to the scoring threads and batches as before (calls gRPC core still holds, not yet
    taken up by the server, are not seen: docs/benchmarks.md measures the share)."""
    warmup_requests: int = Field(8, ge=0, le=10_000)
    """Scoring calls made at start-up before health reports SERVING."""
    incomplete_version_timeout_s: float = Field(60.0, ge=0.0, le=86_400.0)
    """How long a new version whose manifest lists a file that is not there yet (a copy still in
    progress) is retried, at each poll or SIGHUP, before it is refused. 0 refuses it at once."""
    artifact_poll_interval_s: float = Field(0.0, ge=0.0)
    """How often to look for a new artifact version in the repository (0 = never; reload on demand
    only: SIGHUP or ``UniRankServer.reload``)."""
    allow_catalog_change: bool = False
    """Whether a reload may switch to a version of another model family (architecture) or another
    catalogue (fewer than half of the serving version's item ids); false refuses such a version,
    which is almost always the wrong directory rather than a new model."""
    batching: BatchingConfig = BatchingConfig()
    """Dynamic batching (``[model.batching]``); with ONNX Runtime a batch runs where single calls
    would (``inference_workers``)."""


class ConnectionLimits(_Strict):
    """What one connection and one call may hold before it sends anything useful
    (``[server.connections]``): bounds on calls that stall, connections that idle, and streams."""

    first_message_timeout_ms: int = Field(1000, ge=1, le=600_000)
    """A unary call whose request message has not arrived this long after the call opened is
    ended with DEADLINE_EXCEEDED (before authentication, admission or decoding): a stalled call
    holds memory and a place among ``max_open_rpcs`` for at most this long."""
    max_streams_per_connection: int = Field(1000, ge=1, le=1_000_000)
    """Concurrent calls (HTTP/2 streams) one connection may open (``grpc.max_concurrent_streams``).
    gRPC answers a call past it UNAVAILABLE (the stream refused, never processed: safe to retry),
    so keep it above what one client sends at once over one channel."""
    handshake_timeout_ms: int = Field(5000, ge=100, le=600_000)
    """A connection that has not completed its TLS and HTTP/2 handshake this long after it was
    accepted is closed (``grpc.server_handshake_timeout_ms``; gRPC's default is 120 s)."""
    keepalive_time_s: float = Field(60.0, ge=1.0, le=86_400.0)
    """The server pings an open connection this often to find peers that went away without
    closing it (``grpc.keepalive_time_ms``)."""
    keepalive_timeout_s: float = Field(20.0, ge=1.0, le=3600.0)
    """A ping unanswered for this long closes the connection (``grpc.keepalive_timeout_ms``)."""
    max_connection_idle_s: float = Field(300.0, ge=0.0, le=86_400.0)
    """A connection without a call for this long is closed (GOAWAY); 0 keeps it
    (``grpc.max_connection_idle_ms``)."""
    max_connection_age_s: float = Field(0.0, ge=0.0, le=86_400.0)
    """A connection this old is asked to close (GOAWAY), so clients re-resolve and spread over new
    replicas; 0: no limit (``grpc.max_connection_age_ms``)."""
    max_connection_age_grace_s: float = Field(10.0, ge=0.0, le=3600.0)
    """After that, calls still open on it get this long to finish before it is cut
    (``grpc.max_connection_age_grace_ms``)."""


class ServerSection(_Strict):
    """Process-level limits of the gRPC server."""

    host: str = "127.0.0.1"
    """Interface to bind; ``0.0.0.0`` / ``[::]`` for all."""
    port: int = Field(50051, ge=0, le=65535)
    """TCP port; 0 picks a free one (tests)."""
    max_concurrent_rpcs: int = Field(512, ge=1, le=1_000_000)
    """Admission: RPCs that run at once. Past it a call waits in line (``max_queued_rpcs``) or is
    refused with RESOURCE_EXHAUSTED and RetryInfo."""
    max_queued_rpcs: int = Field(0, ge=0, le=1_000_000)
    """Callers that may wait, first come first served, for one of the ``max_concurrent_rpcs``
    slots; past it calls are refused at once, before their request is even checked (the cheapest
    refusal there is, which is what keeps a process answering at several times its capacity)."""
    max_queue_wait_ms: int = Field(0, ge=0, le=600_000)
    """Longest wait in that line; a caller still waiting then is refused with RESOURCE_EXHAUSTED
    and RetryInfo, so admitted calls never carry more than this much queueing under overload.
    0: wait until a slot frees or the call's deadline passes."""
    max_pending_rpcs: int = Field(1000, ge=1, le=1_000_000)
    """RPCs gRPC may hold before the server takes them up (its backlog, ahead of admission). Past
    it gRPC core refuses new calls itself, cheaply but with status CANCELLED (core's choice, not
    UniRank's), so memory and the wait before admission stay bounded when requests arrive faster
    than one process can take them up, let alone refuse them (docs/reliability.md)."""
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    """Largest request or response message. A request up to twice this size is read and refused
    with INVALID_ARGUMENT naming the limit; a larger one is cut off by gRPC itself
    (RESOURCE_EXHAUSTED, no RetryInfo) before it is buffered whole."""
    grace_period_s: float = Field(5.0, ge=0.0, le=600.0)
    """On SIGTERM: time allowed for in-flight requests to finish."""
    max_batch_requests: int = Field(64, ge=1, le=10_000)
    """Most contexts in one RecommendBatch call."""
    reflection: bool = True
    """Expose gRPC server reflection (``[security] reflection_requires_auth`` decides who may use it)."""
    # Upper bounds match the codec's hard cap of 10,000 ids per list.
    max_candidate_ids: int = Field(2000, ge=1, le=10_000)
    """Most ``options.candidate_item_ids`` in one request (INVALID_ARGUMENT naming the limit beyond)."""
    max_history_ids: int = Field(1000, ge=1, le=10_000)
    """Most ``context.history_item_ids`` in one request (INVALID_ARGUMENT beyond); the model reads
    only the most recent ones the artifact's encoder keeps."""
    max_excluded_ids: int = Field(10_000, ge=1, le=10_000)
    """Most ``options.excluded_item_ids`` in one request (INVALID_ARGUMENT beyond)."""
    max_open_rpcs: int = Field(1000, ge=1, le=1_000_000)
    """Calls gRPC lets be open at once, from arrival to answer, whatever they are doing (waiting
    for their request, in line, running; health checks too): past it gRPC refuses new ones itself
    with RESOURCE_EXHAUSTED and no RetryInfo, before any UniRank code runs for them
    (``grpc.aio.server(maximum_concurrent_rpcs)``). Keep it above ``max_concurrent_rpcs`` +
    ``max_queued_rpcs`` so that UniRank's admission, which answers with RetryInfo, refuses first."""
    connections: ConnectionLimits = ConnectionLimits()
    """Stalled calls, idle and old connections, streams per connection (``[server.connections]``)."""


class CacheConfig(_Strict):
    """Response cache of one use-case."""

    enabled: bool = False
    """Serve repeated identical requests from memory (key: model version, config epoch, request
    content; never the request id)."""
    ttl_s: float = Field(30.0, gt=0.0, le=86_400.0)
    """How long a cached ranking may be served."""
    max_entries: int = Field(10_000, ge=1, le=10_000_000)
    """Least recently used entries are evicted beyond this."""
    max_bytes: int = Field(32 * 1024 * 1024, ge=64 * 1024, le=64 * 1024**3)
    """Memory the cache may hold (keys and answers, estimated); least recently used entries are
    evicted beyond this (a 100-item answer is about 12 KB)."""


class FreshnessConfig(_Strict):
    """How fresh the data behind a use-case must be."""

    max_feature_age_s: float = Field(300.0, ge=0.0)
    """Oldest online user features (recent history) the use-case may read."""

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "artifact_poll_interval_s" in data:
            raise ValueError(
                "artifact_poll_interval_s governs the whole server's reload: it moved to "
                "[model] artifact_poll_interval_s"
            )
        return data


FallbackStrategy = Literal["popular", "popular_in_category", "popular_new_releases", "empty", "error"]


class FallbackConfig(_Strict):
    """What answers when the model cannot."""

    strategy: FallbackStrategy = "popular"
    """``popular``, ``popular_in_category`` (category of the context, else popular),
    ``popular_new_releases`` (the request's new releases), ``empty``, or ``error`` (fail the RPC
    instead of answering)."""
    on_deadline: bool = True
    """Use the fallback when the use-case's timeout runs out (else DEADLINE_EXCEEDED)."""
    on_backend_error: bool = True
    """Use the fallback when the backend fails (else INTERNAL)."""
    on_cold_start: bool = True
    """Use the fallback for unknown ids (else rank what retrieval finds)."""


RetrievalSourceName = Literal[
    "caller", "history", "related", "lexical", "embedding", "category", "popular", "new_releases"
]


class RetrievalSourceConfig(_Strict):
    """One candidate source and how many candidates it may contribute."""

    source: RetrievalSourceName
    """``caller``, ``history`` (neighbours of recent history), ``related`` (co-engagement of the
    anchor), ``lexical`` (query tokens in titles), ``embedding`` (nearest item embeddings of the
    anchor or history), ``category`` (members of the context category), ``popular``,
    ``new_releases`` (items released in the request's new-release window, most popular first)."""
    quota: int = Field(100, ge=1, le=100_000)
    """Most candidates this source may contribute."""


class RetrievalConfig(_Strict):
    """Ordered candidate sources; earlier sources win duplicates."""

    sources: tuple[RetrievalSourceConfig, ...] = ()
    """Ordered ``{ source = NAME, quota = N }`` entries."""
    max_candidates: int = Field(200, ge=1, le=100_000)
    """Cap on candidates sent to the model after deduplication."""
    embedding_search: Literal["exact", "approximate"] = "exact"
    """How the ``embedding`` source finds the items nearest the anchor or history: ``exact``
    scores every item of the catalogue (cost grows with it); ``approximate`` searches the HNSW
    index the artifact ships (``item_index.faiss``; cost grows with the log of the catalogue,
    recall@200 against exact in docs/benchmarks.md). An artifact without the index is refused."""
    ann_ef_search: int = Field(512, ge=16, le=4096)
    """With ``approximate``: the HNSW search list; larger finds more of the exact neighbours
    and costs more (at least the items asked for is always used)."""


class RuleConfig(_Strict):
    """A business rule by registered name, with its parameters."""

    name: str
    """A registered rule name (see the rules table)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """The rule's parameters, validated by the rule's own schema."""


class RulesConfig(_Strict):
    """Business rules run outside the model: ``pre`` on candidates, ``post`` on the ranking."""

    pre: tuple[RuleConfig, ...] = ()
    """Rules applied to retrieved candidates before scoring, in order."""
    post: tuple[RuleConfig, ...] = ()
    """Rules applied to the scored ranking before truncation, in order."""


class KpiConfig(_Strict):
    """Online KPIs of a use-case: how long its answers can be credited with engagement."""

    attribution_window_s: float = Field(3600.0, gt=0.0, le=30 * 86_400.0)
    """How long after an answer a RecordEvents event naming its ``impression_id`` is attributed
    to it; later events count as ``unknown_impression`` (the impression store forgets it)."""


class AlertsConfig(_Strict):
    """Prometheus alert thresholds of a use-case, rendered by ``unirank alerts --profile``."""

    availability_target: float = Field(0.999, gt=0.0, lt=1.0)
    """Availability SLO: the share of RPCs that must not end in a server error (UNKNOWN,
    DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS)."""
    latency_threshold_ms: float = Field(100.0, gt=0.0)
    """Latency SLO threshold; must be a bound of the call-duration histogram (e.g. 5, 10, 25,
    50, 100, 250 ms)."""
    latency_target: float = Field(0.99, gt=0.0, lt=1.0)
    """Latency SLO: the share of RPCs that must finish within ``latency_threshold_ms``."""
    min_requests_per_s: float = Field(0.1, ge=0.0)
    """Minimum-traffic guard: SLO and fallback alerts stay silent while the use-case's request
    rate over the short window is below this."""
    ctr_drop_ratio: float = Field(0.5, gt=0.0, lt=1.0)
    """CTR alert: fire when the 1 h click-through rate is below this fraction of the same hour's
    CTR one day and one week earlier (both)."""
    min_impressions_per_s: float = Field(0.05, ge=0.0)
    """Minimum-traffic guard of the CTR alert (impressions per second over 1 h)."""
    max_fallback_rate: float = Field(0.05, gt=0.0, le=1.0)
    """Fallback alert: fire when more than this share of ranked requests was answered by the
    fallback over 10 minutes (for 10 minutes)."""


class GateRule(_Strict):
    """How the offline promotion gate judges a new version on this use-case (``[gate] enabled``)."""

    metric: str = "ndcg@10"
    """The per-task offline metric compared (a key of ``metrics.json``'s ``tasks.NAME.model``)."""
    min_value: float = Field(0.0, ge=0.0)
    """The new version's value must be at least this."""
    max_relative_drop: float = Field(0.05, ge=0.0, le=1.0)
    """Largest drop against the serving version allowed, as a share of its value (0.05: 5 %)."""
    min_rows: int = Field(100, ge=0)
    """Fewest evaluation rows the new version's value may rest on."""
    max_relative_gain: float = Field(1.0, gt=0.0)
    """A larger gain than this share is refused as a likely leak between training and test."""
    allow_large_gain: bool = False
    """Accept gains above ``max_relative_gain``."""


RESCORABLE_METRIC = re.compile(r"^(ndcg|recall)@([1-9][0-9]*)$|^mrr$")
"""The gate metrics a validation log can be re-scored with (``unirank.server.validation``)."""


class GateSection(_Strict):
    """The offline promotion gate (docs/profiles.md, "Lifecycle")."""

    enabled: bool = False
    """Judge every new version against the serving one, per served use-case (``[tasks.NAME.gate]``),
    before it serves; a version that fails is refused like a broken one."""
    validation_logs: str = ""
    """A directory in the UniRank log format (docs/data.md). Set: both versions are re-scored on its
    events (each surface click a row of its use-case; docs/rollouts.md) and those values are
    judged instead of each artifact's metrics.json. Read again at every judgement; a log that
    cannot be read refuses the version. Relative paths are from the working directory."""
    max_rows: int = Field(500, ge=1, le=1_000_000)
    """Validation rows per use-case at most (evenly spaced over the log): bounds a reload's work."""
    max_candidates: int = Field(2000, ge=10, le=10_000_000)
    """Candidates a validation row ranks at most: its use-case's candidate set, or where that is
    larger the positive and a seeded draw from the rest (the same for both versions)."""


class RolloutGuards(_Strict):
    """Operational guards of a canary, per use-case: the canary arm is rolled back when it is worse
    than the stable arm of the same use-case by more than these, once both arms have
    ``min_requests`` answers."""

    min_requests: int = Field(200, ge=1)
    """Answers each arm needs before its guards are checked."""
    max_error_rate_increase: float = Field(0.01, ge=0.0, le=1.0)
    """Largest excess of the canary's server-side error rate over stable's (0.01: one point)."""
    max_fallback_rate_increase: float = Field(0.05, ge=0.0, le=1.0)
    """Largest excess of the canary's fallback rate over stable's."""
    max_p99_ratio: float = Field(2.0, ge=1.0)
    """The canary's p99 latency may be at most this times stable's (plus ``p99_slack_ms``)."""
    p99_slack_ms: float = Field(5.0, ge=0.0)
    """Added to the allowed p99, so microsecond noise on a fast path never rolls back."""


class RolloutSection(_Strict):
    """Canary rollouts of new versions, judged and rolled back per use-case (docs/rollouts.md)."""

    enabled: bool = False
    """A new version (repository poll, SIGHUP, ``unirank rollout start``) that passes the offline
    gate becomes the canary: it answers a growing share of each use-case's users while the serving
    version stays stable, and is promoted or rolled back per use-case. Off: a new version replaces
    the serving one at once."""
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    """Canary shares of users, in percent, in order; the last must be 100, reached only once the
    judge says promote (at 100 % stable gets no traffic left to compare with)."""
    step_impressions: int = Field(2000, ge=1)
    """Canary impressions each step gathers (with no rollback or hold) before the next step."""
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    """Largest probability of rolling back, on CTR or engagement, a canary that is no worse."""
    min_impressions: int = Field(1000, ge=0)
    """Impressions each arm needs before any judgement."""
    min_clicks: int = Field(30, ge=0)
    """Clicks (plays, for the engagement judge) each arm needs before any judgement."""
    tolerated_drop: float = Field(0.05, gt=0.0, lt=0.5)
    """Smallest relative CTR drop the judge aims at (see the judge's mixture)."""
    promote_impressions: int = Field(80_000, ge=1)
    """Canary impressions after which the judge says promote for a use-case without evidence against
    its canary, which then moves to the 100 % step: the budget within which a 10 % CTR drop is caught
    in >= 90 % of runs at a 5 % CTR (scale by 0.05 / CTR)."""
    srm_p_value: float = Field(1e-3, gt=0.0, lt=1.0)
    """A sample-ratio-mismatch p-value below this holds the use-case (not judged, not advanced)."""
    judge_engagement: bool = True
    """Also judge plays per impression (a second e-process; each gets ``alpha / 2``)."""
    judge_interval_s: float = Field(10.0, gt=0.0, le=3600.0)
    """How often every use-case of an active rollout is looked at."""
    look_impressions: int = Field(500, ge=1)
    """New impressions each arm needs before a look hands them to the judge as one batch (the
    clicks of a batch's answers mostly arrive within it, so they are weighed by the right split)."""
    state_file: str = ""
    """The rollout state (JSON, written atomically; a restart resumes it). Empty:
    ``.unirank-rollout.json`` in the artifact repository."""
    retrain_request_file: str = ""
    """Written when a use-case is rolled back: the failing use-cases and why. Empty:
    ``.unirank-retrain-request.json`` beside the state file."""
    guards: RolloutGuards = RolloutGuards()
    """Operational guards per arm (``[rollout.guards]``)."""

    @model_validator(mode="after")
    def _consistent(self) -> RolloutSection:
        steps = self.steps
        if not steps or steps[-1] != 100.0:
            raise ValueError("steps must end at 100 (percent)")
        if any(not 0.0 < step <= 100.0 for step in steps) or list(steps) != sorted(set(steps)):
            raise ValueError("steps must rise strictly, each in (0, 100]")
        if self.promote_impressions < self.min_impressions:
            raise ValueError("promote_impressions must be >= min_impressions")
        return self


class TaskConfig(_Strict):
    """Per use-case behaviour."""

    timeout_ms: float = Field(100.0, gt=0.0, le=60_000.0)
    """Budget for the whole pipeline; the caller's gRPC deadline clamps it."""
    default_max_results: int = Field(10, ge=1, le=10_000)
    """Results when the request leaves ``max_results`` at 0."""
    max_results_limit: int = Field(100, ge=1, le=10_000)
    """Largest ``max_results`` a request may ask for (INVALID_ARGUMENT beyond)."""
    cache: CacheConfig = CacheConfig()
    """Response cache of this use-case (``[tasks.NAME.cache]``)."""
    freshness: FreshnessConfig = FreshnessConfig()
    """Data freshness of this use-case (``[tasks.NAME.freshness]``)."""
    fallback: FallbackConfig = FallbackConfig()
    """What answers when the model cannot (``[tasks.NAME.fallback]``)."""
    retrieval: RetrievalConfig = RetrievalConfig()
    """Candidate sources (``[tasks.NAME.retrieval]``)."""
    rules: RulesConfig = RulesConfig()
    """Business rules (``[tasks.NAME.rules]``)."""
    gate: GateRule = GateRule()
    """How the offline promotion gate judges a new version on this use-case."""
    kpi: KpiConfig = KpiConfig()
    """Online KPIs: the attribution window (``[tasks.NAME.kpi]``)."""
    alerts: AlertsConfig = AlertsConfig()
    """SLO, CTR and fallback alert thresholds (``[tasks.NAME.alerts]``)."""

    @model_validator(mode="after")
    def _limits(self) -> TaskConfig:
        if self.default_max_results > self.max_results_limit:
            raise ValueError("default_max_results must be <= max_results_limit")
        return self


class TelemetrySection(_Strict):
    """Traces, metrics and request logs (``[telemetry]``).

    The standard ``OTEL_*`` environment variables override these keys and ``unirank serve`` flags
    override both (file < env < flags; docs/observability.md lists which variable maps to which key).
    """

    service_name: str = Field("unirank", min_length=1)
    """``service.name`` of every span and metric (``OTEL_SERVICE_NAME``)."""
    traces_exporter: Literal["none", "console", "otlp"] = "none"
    """Where spans go: ``none`` (no tracer is built, so requests pay nothing for tracing),
    ``console`` (one JSON object per span on stdout) or ``otlp`` (OTLP over gRPC)
    (``OTEL_TRACES_EXPORTER``)."""
    metrics_exporter: Literal["none", "console", "otlp", "prometheus"] = "none"
    """Where metrics go: ``none``, ``console``, ``otlp`` (OTLP over gRPC) or ``prometheus`` (a scrape
    endpoint at ``prometheus_host:prometheus_port``) (``OTEL_METRICS_EXPORTER``). The per-task
    counters behind ``unirank monitor`` are kept whatever this says."""
    sampling_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of new traces recorded (``OTEL_TRACES_SAMPLER_ARG`` with a ``traceidratio`` sampler)."""
    parent_based: bool = True
    """Follow the caller's sampling decision when its trace context carries one
    (``OTEL_TRACES_SAMPLER=parentbased_*``)."""
    otlp_endpoint: str = ""
    """OTLP/gRPC collector, e.g. ``http://otel-collector:4317``; empty means the exporter's default
    (``OTEL_EXPORTER_OTLP_ENDPOINT`` and its ``_TRACES_`` / ``_METRICS_`` variants win)."""
    metric_export_interval_s: float = Field(60.0, gt=0.0, le=3600.0)
    """How often the console and OTLP metric exporters push (``OTEL_METRIC_EXPORT_INTERVAL``, in ms)."""
    prometheus_host: str = "127.0.0.1"
    """Interface of the Prometheus scrape endpoint (``OTEL_EXPORTER_PROMETHEUS_HOST``)."""
    prometheus_port: int = Field(9464, ge=0, le=65535)
    """Port of the Prometheus scrape endpoint; 0 picks a free one (``OTEL_EXPORTER_PROMETHEUS_PORT``)."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line; either way, lines written while handling a request
    carry its task type, request id and trace id (``unirank serve --log-format``)."""
    drift_window: int = Field(2000, ge=10, le=1_000_000)
    """Most recent model-scored requests per task whose top score is compared with the reference
    distribution (PSI)."""
    drift_reference: Literal["served", "offline"] = "served"
    """What live top scores are compared with: ``served``, the top scores of candidate sets this
    profile's own retrieval and pre-rules give requests like its traffic (200 per use-case: the
    first 10 scored at load, the rest once it serves, drift waiting for them); ``offline``, the
    artifact's validation top scores over the whole catalogue, which sit above any retrieved
    subset's (healthy traffic then reads as drift). ``served`` falls back to
    ``offline`` for a use-case it cannot ask."""
    drift_min_samples: int = Field(200, ge=1, le=1_000_000)
    """PSI is reported once a task's window holds this many scores; fewer would be noise."""

    @model_validator(mode="after")
    def _window(self) -> TelemetrySection:
        if self.drift_min_samples > self.drift_window:
            raise ValueError("drift_min_samples must be <= drift_window")
        return self


_TASK_NAMES = {spec.name for spec in TASKS}


class FeaturesSection(_Strict):
    """The online feature store: users' recent engagements recorded through RecordEvents."""

    store: Literal["memory", "redis", "none"] = "memory"
    """``memory`` (one replica), ``redis`` (shared by every replica) or ``none`` (only the history
    callers send)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis connection URL (``redis`` store only); ``UNIRANK_REDIS_URL`` overrides it."""
    max_items_per_user: int = Field(50, ge=1, le=10_000)
    """Recent items kept per user."""
    ttl_s: float = Field(7 * 86_400.0, gt=0.0)
    """A user's recent history expires this long after their last event (either store)."""
    max_bytes: int = Field(256 * 1024 * 1024, ge=64 * 1024, le=1024**4)
    """Memory the in-process store (``memory``) may hold, estimated per user and item; past it the
    users written to least recently are evicted (about 4.7 KB per user with 50 items)."""
    timeout_ms: float = Field(30.0, gt=0.0, le=10_000.0)
    """Longest a request waits for the store; past it the request proceeds without fresh history."""
    max_events_per_call: int = Field(1000, ge=1, le=100_000)
    """Most events in one RecordEvents call."""
    event_log: str = ""
    """Also append every accepted RecordEvents event to this CSV file, in the UniRank log format's
    interactions columns (``user_id, item_id, timestamp, event_type``), as training logs for the
    next refit (docs/deployment.md, "Freshness loop"); empty: no log. Relative paths are resolved
    against the server's working directory; ``store = "none"`` with a log only logs."""
    event_id_window: int = Field(100_000, ge=1, le=10_000_000)
    """Most recent ``Event.event_id`` values remembered (with ``event_log``): an event whose id is
    among them is a retry and is not logged again; events without an id are never deduplicated."""


class ImpressionsSection(_Strict):
    """The impression store: what each answer contained, kept for its use-case's attribution
    window so RecordEvents feedback naming its ``impression_id`` is credited to it."""

    store: Literal["memory", "redis", "none"] = "memory"
    """``memory`` (one replica), ``redis`` (shared by every replica: feedback often reaches another
    replica than the one that answered) or ``none`` (no attribution; answers still carry ids)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis connection URL (``redis`` store only); ``UNIRANK_REDIS_URL`` overrides it."""
    max_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024, le=1024**4)
    """Memory the in-process store (``memory``) may hold; past it the oldest-used impressions are
    evicted first (about 1.6 KB per answer of 10 items)."""
    timeout_ms: float = Field(30.0, gt=0.0, le=10_000.0)
    """Longest a request or RecordEvents call waits for the store (``redis``); past it the answer
    goes out unrecorded / the event counts as unattributed."""
    event_id_window: int = Field(100_000, ge=1, le=10_000_000)
    """Most recent attributed ``Event.event_id`` values remembered in process (``redis`` keeps
    each for the attribution window): a repeated id is a duplicate and is not counted again."""


class GrantConfig(_Strict):
    """What one token may do (``[security.grants.NAME]``, NAME as in the tokens file)."""

    methods: tuple[str, ...] = ("Recommend", "RecommendBatch", "GetModelInfo")
    """RPC names of ``unirank.v1.RecommenderService`` the token may call; every other method gets
    PERMISSION_DENIED (a grant allows only what it lists). Left out, the read-only ones: ranking
    and model info; ``RecordEvents`` (writes any user's history), ``GetServingStats`` (operational
    data) and the rollout commands (``GetRolloutStatus``, ``StartRollout``, ``PromoteRollout``,
    ``AbortRollout``) must be named to be allowed."""
    tasks: tuple[str, ...] = ()
    """Use-cases the token may rank for, e.g. ``["search"]``; empty allows every use-case. A request
    (or a RecommendBatch member) for another one gets PERMISSION_DENIED."""

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        from unirank.v1 import recommender_pb2 as pb

        known = {m.name for m in pb.DESCRIPTOR.services_by_name["RecommenderService"].methods}
        unknown = sorted(set(methods) - known)
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {sorted(known)}")
        if not methods:
            raise ValueError("a grant must allow at least one method (leave it out for the read-only ones)")
        return methods

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(tasks) - _TASK_NAMES)
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {sorted(_TASK_NAMES)}")
        return tasks


class SecuritySection(_Strict):
    """TLS, mutual TLS and bearer-token authentication (``[security]``; all off by default).

    Secrets never live in the profile: it names the files and the environment variable that hold
    them. Relative paths are resolved against the server's working directory.
    """

    tls_cert_file: str = ""
    """PEM certificate chain of the server; set with ``tls_key_file`` to serve TLS only (empty:
    plaintext)."""
    tls_key_file: str = ""
    """PEM private key of ``tls_cert_file``."""
    client_ca_file: str = ""
    """PEM bundle of the CAs whose client certificates are accepted (mutual TLS); needs
    ``require_client_cert = true``."""
    require_client_cert: bool = False
    """Fail the TLS handshake of a client without a valid (signed by ``client_ca_file``, not
    expired) certificate: mutual TLS. Set together with ``client_ca_file``: gRPC Python either
    requires and verifies a client certificate or does not ask for one at all, so a CA without
    this would be ignored, and is refused at load."""
    auth: Literal["none", "bearer"] = "none"
    """``bearer``: every call must send ``authorization: Bearer <token>`` metadata with a configured
    token (UNAUTHENTICATED otherwise); ``none``: no token is asked for."""
    tokens_file: str = ""
    """File of ``NAME:TOKEN`` entries, one per line (``#`` comments); tokens of at least 16
    characters, compared in constant time, never logged (only NAME is)."""
    tokens_env: str = ""
    """Environment variable holding more ``NAME:TOKEN`` entries, separated by commas or newlines
    (e.g. ``UNIRANK_TOKENS``, filled from a Kubernetes secret)."""
    grants: dict[str, GrantConfig] = Field(default_factory=dict)
    """Per-token limits by token NAME (``[security.grants.NAME]``): a token with an entry may call
    only the methods its entry allows, for its use-cases; a token without an entry is an
    operator's and may call every method for every use-case."""
    health_requires_auth: bool = False
    """Health checks need a token too; false keeps them open for load balancers and probes."""
    reflection_requires_auth: bool = True
    """Server reflection needs a token too (when ``[server] reflection`` exposes it at all)."""

    @model_validator(mode="after")
    def _consistent(self) -> SecuritySection:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.client_ca_file and not self.tls_cert_file:
            raise ValueError("client_ca_file needs TLS (tls_cert_file and tls_key_file)")
        if self.require_client_cert and not self.client_ca_file:
            raise ValueError("require_client_cert needs client_ca_file")
        if self.client_ca_file and not self.require_client_cert:
            raise ValueError(
                "client_ca_file needs require_client_cert = true: without it gRPC asks clients for "
                "no certificate, so the CA would be ignored and no certificate checked"
            )
        if self.auth == "bearer" and not (self.tokens_file or self.tokens_env):
            raise ValueError("auth = 'bearer' needs tokens_file or tokens_env")
        if self.auth == "none" and (self.grants or self.health_requires_auth):
            raise ValueError("grants and health_requires_auth need auth = 'bearer'")
        return self


class Profile(_Strict):
    """One deployment of the shared model."""

    name: str = Field(min_length=1)
    """Profile name, reported in every response and in telemetry."""
    description: str = ""
    """Free text for operators."""
    model: ModelSection = ModelSection()
    """Backend, device, threads and batching (``[model]``)."""
    server: ServerSection = ServerSection()
    """Process limits (``[server]``)."""
    telemetry: TelemetrySection = TelemetrySection()
    """Traces, metrics and logs (``[telemetry]``)."""
    features: FeaturesSection = FeaturesSection()
    """The online feature store (``[features]``)."""
    impressions: ImpressionsSection = ImpressionsSection()
    """The impression store behind KPI attribution (``[impressions]``)."""
    security: SecuritySection = SecuritySection()
    """TLS, mutual TLS and authentication (``[security]``)."""
    gate: GateSection = GateSection()
    """The offline promotion gate of new versions (``[gate]``)."""
    rollout: RolloutSection = RolloutSection()
    """Canary rollouts of new versions, per use-case (``[rollout]``)."""
    tasks: Annotated[dict[str, TaskConfig], Field(min_length=1)]
    """The use-cases this deployment serves, by task name; others get FAILED_PRECONDITION."""

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
        unknown = sorted(set(tasks) - _TASK_NAMES)
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {sorted(_TASK_NAMES)}")
        return tasks

    @model_validator(mode="after")
    def _gate_metrics_rescorable(self) -> Profile:
        if self.gate.validation_logs:
            wrong = sorted(
                name for name, task in self.tasks.items() if not RESCORABLE_METRIC.match(task.gate.metric)
            )
            if wrong:
                raise ValueError(
                    f"gate.validation_logs re-scores ndcg@K, recall@K or mrr; tasks {wrong} name another "
                    "[tasks.NAME.gate] metric"
                )
        return self

    def task(self, name: str) -> TaskConfig | None:
        return self.tasks.get(name)


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(root)"
        lines.append(f"{source}: {key}: {error['msg']}")
    return "\n".join(lines)


def parse_profile(data: dict[str, Any], source: str = "<profile>") -> Profile:
    """Validate an already-parsed profile table; rule names are checked against the registry."""
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_errors(source, exc)) from None
    problems = []
    for task_name, task in profile.tasks.items():
        for stage in ("pre", "post"):
            for index, rule in enumerate(getattr(task.rules, stage)):
                for problem in validate_rule_configs(stage, rule):
                    problems.append(f"{source}: tasks.{task_name}.rules.{stage}.{index}: {problem}")
    if problems:
        raise ProfileError("\n".join(problems))
    return profile


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile TOML file."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{file}: no such profile file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{file}: invalid TOML: {exc}") from None
    return parse_profile(data, str(file))
