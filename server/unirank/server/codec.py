"""Protobuf <-> domain conversion, with request validation. The only module that knows both."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from unirank.artifact import TASKS, Context, TaskType
from unirank.artifact.eventtime import EVENT_TIME_RANGE, MAX_EVENT_TIME_MS, is_valid_event_time_ms
from unirank.server.config import ServerSection
from unirank.server.domain import ModelInfo, RankedItem, RankOptions, RankRequest, RankResponse
from unirank.server.errors import FieldViolation, InvalidArgument, ServingError, code_of
from unirank.server.gate import GateDecision
from unirank.server.impressions import Feedback
from unirank.server.online_store import RecentEvent
from unirank.server.rollout.state import Rollout
from unirank.server.telemetry.kpi import KpiCounters
from unirank.server.telemetry.stats import LATENCY_BUCKETS_S, ServingStats
from unirank.v1 import recommender_pb2 as pb

MAX_ID_LENGTH = 128
MAX_QUERY_CHARS = 512
MAX_LIST_IDS = 10_000
MAX_SHORT_FIELD = 64

_ONEOF_TO_TASK: dict[str, TaskType] = {spec.context_field: spec.task_type for spec in TASKS}
MAX_WINDOW_YEARS = 200


@dataclass(frozen=True)
class RequestLimits:
    """Size limits checked while a request is decoded, before any handler runs (``[server]``).

    The list limits are the profile's; ``MAX_LIST_IDS`` stays the hard cap behind them.
    """

    max_message_bytes: int = 4 * 1024 * 1024
    max_candidate_ids: int = MAX_LIST_IDS
    max_history_ids: int = MAX_LIST_IDS
    max_excluded_ids: int = MAX_LIST_IDS

    @classmethod
    def from_server(cls, section: ServerSection) -> RequestLimits:
        return cls(
            max_message_bytes=section.max_message_bytes,
            max_candidate_ids=section.max_candidate_ids,
            max_history_ids=section.max_history_ids,
            max_excluded_ids=section.max_excluded_ids,
        )


def _list_limits(message: pb.RecommendRequest, limits: RequestLimits, prefix: str) -> list[FieldViolation]:
    ctx, opts = message.context, message.options
    checks = (
        ("context.history_item_ids", len(ctx.history_item_ids), "max_history_ids"),
        ("options.candidate_item_ids", len(opts.candidate_item_ids), "max_candidate_ids"),
        ("options.excluded_item_ids", len(opts.excluded_item_ids), "max_excluded_ids"),
    )
    return [
        FieldViolation(f"{prefix}{field}", f"has {count} entries, at most {limit} allowed (server.{key})")
        for field, count, key in checks
        if count > (limit := getattr(limits, key))
    ]


def limit_violations(message: object, limits: RequestLimits) -> list[FieldViolation]:
    """Every list of a Recommend / RecommendBatch request longer than the profile allows."""
    if isinstance(message, pb.RecommendRequest):
        return _list_limits(message, limits, "")
    if isinstance(message, pb.RecommendBatchRequest):
        found: list[FieldViolation] = []
        for index, member in enumerate(message.requests):
            found += _list_limits(member, limits, f"requests[{index}].")
            if len(found) >= 10:  # enough to fix the caller; the rest is noise
                break
        return found
    return []


def _has_control(value: str, allowed: str = "") -> bool:
    if value.isprintable():  # no control character (one C call for the common case)
        return False
    return any(unicodedata.category(ch) == "Cc" and ch not in allowed for ch in value)


def _id_problem(value: str) -> str | None:
    if len(value) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    if value.isascii():
        # Printable ASCII holds no control character and no whitespace but the space: one C call.
        if value.isprintable() and " " not in value:
            return None
        return "contains whitespace or control characters"
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in value):
        return "contains whitespace or control characters"
    return None


def _all_plain_ascii_ids(values: Sequence[str]) -> bool:
    """The common case of a whole id list, checked in C: non-empty, short, printable ASCII, no space."""
    if not values or not all(values) or max(map(len, values)) > MAX_ID_LENGTH:
        return False
    joined = "".join(values)
    return joined.isascii() and joined.isprintable() and " " not in joined


class _Validator:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def optional_id(self, field: str, value: str) -> None:
        problem = _id_problem(value) if value else None
        if problem:
            self.add(field, problem)

    def required_id(self, field: str, value: str) -> None:
        if not value:
            self.add(field, "is required")
        else:
            self.optional_id(field, value)

    def short(self, field: str, value: str) -> None:
        if len(value) > MAX_SHORT_FIELD:
            self.add(field, f"longer than {MAX_SHORT_FIELD} characters")
        elif _has_control(value):
            self.add(field, "contains control characters")

    def id_list(self, field: str, values: Sequence[str], limit: int = MAX_LIST_IDS) -> None:
        if len(values) > limit:
            self.add(field, f"has {len(values)} entries, at most {limit} allowed")
            return
        if _all_plain_ascii_ids(values):
            return
        # Slow path only to name the first offending entry.
        for index, value in enumerate(values):
            problem = "is empty" if not value else _id_problem(value)
            if problem:
                self.add(f"{field}[{index}]", problem)
                return


def request_from_pb(message: pb.RecommendRequest, prefix: str = "") -> RankRequest:
    """Validate and convert; raises InvalidArgument naming every bad field (``prefix`` for batches)."""
    check = _Validator()
    ctx = message.context
    oneof = ctx.WhichOneof("task")
    if oneof is None:
        raise InvalidArgument.single(
            f"{prefix}context.task", f"no use-case set: one of {', '.join(_ONEOF_TO_TASK)}"
        )
    task = _ONEOF_TO_TASK[oneof]
    check.optional_id(f"{prefix}context.request_id", ctx.request_id)
    check.optional_id(f"{prefix}context.user_id", ctx.user_id)
    check.short(f"{prefix}context.country", ctx.country)
    check.short(f"{prefix}context.language", ctx.language)
    check.short(f"{prefix}context.device", ctx.device)
    if ctx.event_time_unix_ms < 0:
        check.add(f"{prefix}context.event_time_unix_ms", "must be >= 0")
    history = tuple(ctx.history_item_ids)
    check.id_list(f"{prefix}context.history_item_ids", history)
    query = anchor = category = ""
    window_years = 0
    if task in (TaskType.NOTIFICATION, TaskType.NEW_RELEASES):
        if not ctx.user_id and not history:
            check.add(f"{prefix}context.user_id", f"{oneof} needs a user_id or history_item_ids")
        if task is TaskType.NEW_RELEASES:
            window_years = ctx.new_releases.window_years
            if not 0 <= window_years <= MAX_WINDOW_YEARS:
                check.add(f"{prefix}context.new_releases.window_years", f"must be in [0, {MAX_WINDOW_YEARS}]")
    elif task is TaskType.RELATED_ITEMS:
        anchor = ctx.related_items.anchor_item_id
        check.required_id(f"{prefix}context.related_items.anchor_item_id", anchor)
    elif task is TaskType.SEARCH:
        query = ctx.search.query
        if not query.strip():
            check.add(f"{prefix}context.search.query", "is required (non-blank)")
        elif len(query) > MAX_QUERY_CHARS:
            check.add(f"{prefix}context.search.query", f"longer than {MAX_QUERY_CHARS} characters")
        elif _has_control(query, allowed="\t\n\r"):
            check.add(f"{prefix}context.search.query", "contains control characters (other than tab/newline)")
    elif task is TaskType.CATEGORY:
        category = ctx.category.category_id
        check.required_id(f"{prefix}context.category.category_id", category)
    opts = message.options
    candidates, excluded = tuple(opts.candidate_item_ids), tuple(opts.excluded_item_ids)
    check.id_list(f"{prefix}options.candidate_item_ids", candidates)
    check.id_list(f"{prefix}options.excluded_item_ids", excluded)
    if check.violations:
        raise InvalidArgument(check.violations)
    return RankRequest(
        context=Context(
            task=task,
            user_id=ctx.user_id,
            history_item_ids=history,
            query=query,
            anchor_item_id=anchor,
            category_id=category,
        ),
        options=RankOptions(
            max_results=opts.max_results,
            candidate_item_ids=candidates,
            excluded_item_ids=excluded,
            debug=opts.debug,
        ),
        request_id=ctx.request_id,
        country=ctx.country,
        language=ctx.language,
        device=ctx.device,
        event_time_unix_ms=ctx.event_time_unix_ms,
        window_years=window_years,
    )


def response_to_pb(response: RankResponse, debug: bool) -> pb.RecommendResponse:
    message = pb.RecommendResponse(
        request_id=response.request_id,
        task_type=int(response.task),  # type: ignore[arg-type]
        model_version=response.model_version,
        profile=response.profile,
        served_from_cache=response.served_from_cache,
        fallback=response.fallback,
        fallback_reason=int(response.fallback_reason),  # type: ignore[arg-type]
        fallback_detail=response.fallback_detail,
        stored_history=response.stored_history,
        impression_id=response.impression_id,
        arm=response.arm,
    )
    message.items.extend(_item_to_pb(item, debug) for item in response.items)
    if debug:
        message.timings.extend(pb.StageTiming(stage=s, duration_ms=ms) for s, ms in response.timings)
    return message


def _item_to_pb(item: RankedItem, debug: bool) -> pb.RankedItem:
    return pb.RankedItem(
        item_id=item.item_id,
        score=item.score,
        title=item.title,
        category_id=item.category_id,
        retrieval_source=int(item.source) if debug else 0,  # type: ignore[arg-type]
    )


def serving_stats_to_pb(stats: ServingStats, model_version: str, profile: str) -> pb.GetServingStatsResponse:
    """The in-process per-task counters as ``GetServingStats`` answers them."""
    message = pb.GetServingStatsResponse(
        model_version=model_version,
        profile=profile,
        uptime_s=stats.uptime_s,
        latency_bucket_bounds_s=LATENCY_BUCKETS_S,
    )
    message.unattributed_events_by_reason.update(stats.kpis.unattributed)
    for task, counters in stats.items():
        entry = message.tasks.add(
            task=task,
            rpcs_by_code=counters.rpcs_by_code(),
            latency_bucket_counts=counters.latency_counts,
            latency_sum_s=counters.latency_sum_s,
            in_flight=max(0, counters.in_flight),
            served_by_model=counters.rankings["model"],
            served_by_cache=counters.rankings["cache"],
            served_by_fallback=counters.rankings["fallback"],
            fallbacks_by_reason=counters.fallbacks,
            cache_hits=counters.cache_hits,
            cache_misses=counters.cache_misses,
        )
        _kpis_to_pb(entry, stats.kpis, task)
        window = counters.drift
        if window is not None:
            entry.drift.has_reference = True
            entry.drift.window_samples = window.samples
            entry.drift.bin_edges.extend(window.reference.edges)
            entry.drift.reference_fractions.extend(window.reference.fractions)
            entry.drift.live_fractions.extend(window.live_fractions())
            value = window.psi()
            if value is not None:
                entry.drift.psi = value
    # A replica that answered no request of a task may still have attributed feedback for it.
    reported = {entry.task for entry in message.tasks}
    for task in sorted({task for (task, _, _), _ in stats.kpis.items()} - reported):
        _kpis_to_pb(message.tasks.add(task=task), stats.kpis, task)
    ordered = sorted(message.tasks, key=lambda entry: entry.task)
    del message.tasks[:]
    message.tasks.extend(ordered)
    return message


def _kpis_to_pb(entry: pb.TaskServingStats, kpis: KpiCounters, task: str) -> None:
    for version, arm, kpi in kpis.for_task(task):
        entry.kpis.add(
            model_version=version,
            arm=arm,
            impressions=kpi.impressions,
            clicks=kpi.events["click"],
            plays=kpi.events["play"],
            play_completes=kpi.events["play_complete"],
            views=kpi.events["view"],
            engagement_seconds_sum=kpi.engagement_seconds,
            click_positions=kpi.click_positions,
        )


def events_from_pb(message: pb.RecordEventsRequest, max_events: int, now_ms: int) -> list[RecentEvent]:
    """Validate RecordEvents input; an event time of 0 means ``now_ms``."""
    check = _Validator()
    if not message.events:
        check.add("events", "at least one event is required")
    elif len(message.events) > max_events:
        check.add("events", f"has {len(message.events)} entries, at most {max_events} allowed")
    else:
        for index, event in enumerate(message.events):
            check.required_id(f"events[{index}].user_id", event.user_id)
            check.required_id(f"events[{index}].item_id", event.item_id)
            # 0 means now; anything else must be a time training accepts (unirank.artifact.eventtime).
            if event.event_time_unix_ms and not is_valid_event_time_ms(event.event_time_unix_ms):
                check.add(
                    f"events[{index}].event_time_unix_ms",
                    f"must be a Unix time in milliseconds within {EVENT_TIME_RANGE} "
                    f"(0 to {MAX_EVENT_TIME_MS}; 0 means now)",
                )
            check.optional_id(f"events[{index}].event_id", event.event_id)
            _check_feedback(check, f"events[{index}].", event)
            if len(check.violations) >= 10:  # enough to fix the caller; the rest is noise
                break
    if check.violations:
        raise InvalidArgument(check.violations)
    return [
        RecentEvent(e.user_id, e.item_id, e.event_time_unix_ms or now_ms, e.event_type, e.event_id)
        for e in message.events
    ]


MAX_ENGAGEMENT_SECONDS = 7 * 86_400.0
"""A week: more engagement than that from one event is a unit error (milliseconds sent as seconds)."""


def _check_feedback(check: _Validator, prefix: str, event: pb.Event) -> None:
    """The attribution fields of one event: optional, but well-formed when sent."""
    check.optional_id(f"{prefix}impression_id", event.impression_id)
    seconds = event.engagement_seconds
    if not 0.0 <= seconds <= MAX_ENGAGEMENT_SECONDS:  # also false for NaN
        check.add(f"{prefix}engagement_seconds", f"must be within 0 to {MAX_ENGAGEMENT_SECONDS:.0f} seconds")
    if event.position and not event.impression_id:
        check.add(f"{prefix}position", "needs impression_id (a position is within an answer)")


def feedback_from_pb(message: pb.RecordEventsRequest) -> list[Feedback]:
    """The already validated events that name an impression (the others are not attributed)."""
    return [
        Feedback(
            e.impression_id,
            e.user_id,
            e.item_id,
            e.event_type,
            e.position,
            e.engagement_seconds,
            e.event_id,
        )
        for e in message.events
        if e.impression_id
    ]


def gate_to_pb(decision: GateDecision) -> pb.GateDecision:
    """The offline gate's decision as ``GetModelInfoResponse.last_gate`` carries it."""
    return pb.GateDecision(
        model_version=decision.version,
        serving_version=decision.serving_version,
        accepted=decision.accepted,
        decided_unix_ms=decision.decided_unix_ms,
        tasks=[
            pb.GateTaskVerdict(
                task=row.task,
                metric=row.metric,
                serving_value=row.serving,
                candidate_value=row.candidate,
                relative_change=row.relative_change,
                rows=row.rows,
                passed=row.passed,
                reason=row.reason,
                source=row.source,
            )
            for row in decision.rows
        ],
    )


def model_info_to_pb(info: ModelInfo, last_gate: GateDecision | None = None) -> pb.GetModelInfoResponse:
    """The domain model info (and the gate's last decision, if any) as ``GetModelInfo`` answers it."""
    return pb.GetModelInfoResponse(
        last_gate=gate_to_pb(last_gate) if last_gate is not None else None,
        model_version=info.model_version,
        schema_version=info.schema_version,
        profile=info.profile,
        backend=info.backend,
        device=info.device,
        tasks=[
            pb.TaskInfo(
                task_type=int(task.task),  # type: ignore[arg-type]
                served=task.served,
                offline_metrics=task.offline_metrics,
            )
            for task in info.tasks
        ],
        created_unix_ms=info.created_unix_ms,
        catalog_size=info.catalog_size,
    )


def batch_response_to_pb(
    requests: Sequence[RankRequest], outcomes: Sequence[RankResponse | ServingError]
) -> pb.RecommendBatchResponse:
    """Members' answers in order; ``statuses`` (one per member) only when a member failed, so an
    all-answered batch reads as it did before per-member statuses existed."""
    answer = pb.RecommendBatchResponse()
    for request, outcome in zip(requests, outcomes, strict=True):
        if isinstance(outcome, ServingError):
            answer.responses.add()
        else:
            answer.responses.append(response_to_pb(outcome, request.options.debug))
    if any(isinstance(outcome, ServingError) for outcome in outcomes):
        answer.statuses.extend(_member_status(outcome) for outcome in outcomes)
    return answer


def _member_status(outcome: RankResponse | ServingError) -> pb.MemberStatus:
    """OK for an answered member, else the status its error would give a call of its own."""
    if not isinstance(outcome, ServingError):
        return pb.MemberStatus()
    status = pb.MemberStatus(code=code_of(outcome).value[0], message=outcome.message, reason=outcome.reason)
    retry_after_s = getattr(outcome, "retry_after_s", None)
    if retry_after_s is not None:
        status.retry_delay.FromNanoseconds(int(retry_after_s * 1e9))
    return status


def rollout_to_pb(rollout: Rollout | None) -> pb.RolloutStatus:
    """A rollout as ``GetRolloutStatus`` and the rollout commands answer it (state "none" without)."""
    if rollout is None:
        return pb.RolloutStatus(state="none")
    message = pb.RolloutStatus(
        rollout_id=rollout.rollout_id,
        state="active" if rollout.active else "finished",
        canary_version=rollout.canary_version,
        steps_percent=rollout.steps,
        started_unix_ms=rollout.started_unix_ms,
        finished_unix_ms=rollout.finished_unix_ms,
        retrain_request=rollout.retrain_request,
    )
    for name, task in sorted(rollout.tasks.items()):
        message.tasks.add(
            task=name,
            status=task.status,
            canary_percent=rollout.share(name),
            step=task.step,
            stable_version=task.stable_version,
            verdict=task.verdict,
            reason=task.reason,
            e_value=task.e_value,
            canary_impressions=task.ctr.canary.impressions,
            canary_clicks=task.ctr.canary.clicks,
            stable_impressions=task.ctr.stable.impressions,
            stable_clicks=task.ctr.stable.clicks,
        )
    return message
