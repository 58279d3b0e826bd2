"""Symmetric conversions between the client's domain values and the unirank.v1 protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from unirank.client.domain import (
    Category,
    Event,
    GateDecision,
    GateVerdict,
    ModelInfo,
    NewReleases,
    Notification,
    RankedItem,
    Ranking,
    RecommendationRequest,
    RecordedEvents,
    RelatedItems,
    Search,
    Task,
    TaskInfo,
)
from unirank.v1 import recommender_pb2 as pb

_TASK_PREFIX = "TASK_TYPE_"
_SOURCE_PREFIX = "RETRIEVAL_SOURCE_"
_FALLBACK_PREFIX = "FALLBACK_REASON_"


def enum_short_name(enum: EnumTypeWrapper, prefix: str, value: int) -> str:
    """``TASK_TYPE_RELATED_ITEMS`` -> ``"related_items"``; 0 (unspecified) -> ``""``.

    A value this client's stubs do not know (a newer server) becomes its number as text, so it
    is still shown and still encodes back to the same number.
    """
    if value == 0:
        return ""
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def enum_value(enum: EnumTypeWrapper, prefix: str, short_name: str) -> int:
    """The inverse of :func:`enum_short_name`; raises ValueError naming the known names."""
    if not short_name:
        return 0
    if short_name.isdigit():
        return int(short_name)
    try:
        return int(enum.Value(prefix + short_name.upper()))
    except ValueError:
        known = [name.removeprefix(prefix).lower() for name in enum.keys()[1:]]
        raise ValueError(f"unknown {prefix.rstrip('_').lower()} {short_name!r}; known: {known}") from None


def fallback_reason_name(value: int) -> str:
    """Short name of a ``unirank.v1.FallbackReason`` value, e.g. ``"cold_start"``."""
    return enum_short_name(pb.FallbackReason, _FALLBACK_PREFIX, value)


def task_type_name(value: int) -> str:
    """Short name of a ``unirank.v1.TaskType`` value, e.g. ``"search"``."""
    return enum_short_name(pb.TaskType, _TASK_PREFIX, value)


def task_type_value(short_name: str) -> int:
    """``unirank.v1.TaskType`` value of a short task name."""
    return enum_value(pb.TaskType, _TASK_PREFIX, short_name)


def task_of(context: pb.RequestContext) -> Task:
    """The domain task named by the context's ``oneof task``; ValueError when none is set."""
    which = context.WhichOneof("task")
    if which == "notification":
        return Notification()
    if which == "related_items":
        return RelatedItems(anchor_item_id=context.related_items.anchor_item_id)
    if which == "search":
        return Search(query=context.search.query)
    if which == "category":
        return Category(category_id=context.category.category_id)
    if which == "new_releases":
        return NewReleases(window_years=context.new_releases.window_years)
    raise ValueError("the request context names no task (the 'task' oneof is unset)")


def _set_task(context: pb.RequestContext, task: Task) -> None:
    # CopyFrom for every task: NotificationContext has no field to assign, and merely reading
    # ``context.notification`` leaves the oneof unset, so the server would see no task at all.
    if isinstance(task, Notification):
        context.notification.CopyFrom(pb.NotificationContext())
    elif isinstance(task, RelatedItems):
        context.related_items.CopyFrom(pb.RelatedItemsContext(anchor_item_id=task.anchor_item_id))
    elif isinstance(task, Search):
        context.search.CopyFrom(pb.SearchContext(query=task.query))
    elif isinstance(task, Category):
        context.category.CopyFrom(pb.CategoryContext(category_id=task.category_id))
    elif isinstance(task, NewReleases):
        context.new_releases.CopyFrom(pb.NewReleasesContext(window_years=task.window_years))
    else:
        raise TypeError(f"not a UniRank task: {task!r}")


def encode_request(request: RecommendationRequest) -> pb.RecommendRequest:
    """Domain request -> ``unirank.v1.RecommendRequest``."""
    if request.max_results < 0:
        raise ValueError(f"max_results must be >= 0, got {request.max_results}")
    context = pb.RequestContext(
        request_id=request.request_id,
        user_id=request.user_id,
        country=request.country,
        language=request.language,
        device=request.device,
        event_time_unix_ms=request.event_time_unix_ms,
        history_item_ids=request.history_item_ids,
    )
    _set_task(context, request.task)
    options = pb.RequestOptions(
        max_results=request.max_results,
        candidate_item_ids=request.candidate_item_ids,
        excluded_item_ids=request.excluded_item_ids,
        debug=request.debug,
    )
    return pb.RecommendRequest(context=context, options=options)


def decode_request(message: pb.RecommendRequest) -> RecommendationRequest:
    """``unirank.v1.RecommendRequest`` -> domain request; ValueError when it names no task."""
    context, options = message.context, message.options
    return RecommendationRequest(
        task=task_of(context),
        user_id=context.user_id,
        history_item_ids=tuple(context.history_item_ids),
        request_id=context.request_id,
        country=context.country,
        language=context.language,
        device=context.device,
        event_time_unix_ms=context.event_time_unix_ms,
        max_results=options.max_results,
        candidate_item_ids=tuple(options.candidate_item_ids),
        excluded_item_ids=tuple(options.excluded_item_ids),
        debug=options.debug,
    )


def encode_item(item: RankedItem) -> pb.RankedItem:
    """Domain ranked item -> ``unirank.v1.RankedItem``."""
    return pb.RankedItem(
        item_id=item.item_id,
        score=item.score,
        title=item.title,
        category_id=item.category_id,
        retrieval_source=enum_value(pb.RetrievalSource, _SOURCE_PREFIX, item.retrieval_source),  # type: ignore[arg-type]
    )


def decode_item(message: pb.RankedItem) -> RankedItem:
    """``unirank.v1.RankedItem`` -> domain ranked item."""
    return RankedItem(
        item_id=message.item_id,
        score=message.score,
        title=message.title,
        category_id=message.category_id,
        retrieval_source=enum_short_name(pb.RetrievalSource, _SOURCE_PREFIX, message.retrieval_source),
    )


def encode_ranking(ranking: Ranking) -> pb.RecommendResponse:
    """Domain ranking -> ``unirank.v1.RecommendResponse``."""
    return pb.RecommendResponse(
        request_id=ranking.request_id,
        task_type=task_type_value(ranking.task_type),  # type: ignore[arg-type]
        items=[encode_item(item) for item in ranking.items],
        model_version=ranking.model_version,
        profile=ranking.profile,
        served_from_cache=ranking.served_from_cache,
        fallback=ranking.fallback,
        fallback_reason=enum_value(pb.FallbackReason, _FALLBACK_PREFIX, ranking.fallback_reason),  # type: ignore[arg-type]
        fallback_detail=ranking.fallback_detail,
        stored_history=ranking.stored_history,
        arm=ranking.arm,
        timings=[pb.StageTiming(stage=stage, duration_ms=ms) for stage, ms in ranking.timings.items()],
    )


def decode_ranking(message: pb.RecommendResponse) -> Ranking:
    """``unirank.v1.RecommendResponse`` -> domain ranking."""
    timings: dict[str, float] = {}
    for timing in message.timings:
        # A stage reported twice (e.g. scored in two batches) took both durations.
        timings[timing.stage] = timings.get(timing.stage, 0.0) + timing.duration_ms
    return Ranking(
        items=[decode_item(item) for item in message.items],
        request_id=message.request_id,
        task_type=task_type_name(message.task_type),
        model_version=message.model_version,
        profile=message.profile,
        served_from_cache=message.served_from_cache,
        fallback=message.fallback,
        fallback_reason=enum_short_name(pb.FallbackReason, _FALLBACK_PREFIX, message.fallback_reason),
        fallback_detail=message.fallback_detail,
        timings=timings,
        stored_history=message.stored_history,
        impression_id=message.impression_id,
        arm=message.arm,
    )


def encode_model_info(info: ModelInfo) -> pb.GetModelInfoResponse:
    """Domain model info -> ``unirank.v1.GetModelInfoResponse``."""
    return pb.GetModelInfoResponse(
        model_version=info.model_version,
        schema_version=info.schema_version,
        profile=info.profile,
        backend=info.backend,
        device=info.device,
        tasks=[
            pb.TaskInfo(
                task_type=task_type_value(task.task_type),  # type: ignore[arg-type]
                served=task.served,
                offline_metrics=task.offline_metrics,
            )
            for task in info.tasks
        ],
        created_unix_ms=info.created_unix_ms,
        catalog_size=info.catalog_size,
        last_gate=encode_gate(info.last_gate) if info.last_gate is not None else None,
    )


def encode_gate(decision: GateDecision) -> pb.GateDecision:
    """Domain gate decision -> ``unirank.v1.GateDecision``."""
    return pb.GateDecision(
        model_version=decision.model_version,
        serving_version=decision.serving_version,
        accepted=decision.accepted,
        decided_unix_ms=decision.decided_unix_ms,
        tasks=[
            pb.GateTaskVerdict(
                task=v.task,
                metric=v.metric,
                serving_value=v.serving_value,
                candidate_value=v.candidate_value,
                relative_change=v.relative_change,
                rows=v.rows,
                passed=v.passed,
                reason=v.reason,
                source=v.source,
            )
            for v in decision.tasks
        ],
    )


def _optional(message: pb.GateTaskVerdict, name: str) -> float | None:
    return float(getattr(message, name)) if message.HasField(name) else None


def decode_gate(message: pb.GateDecision) -> GateDecision:
    """``unirank.v1.GateDecision`` -> domain gate decision."""
    return GateDecision(
        model_version=message.model_version,
        serving_version=message.serving_version,
        accepted=message.accepted,
        decided_unix_ms=message.decided_unix_ms,
        tasks=[
            GateVerdict(
                task=v.task,
                metric=v.metric,
                serving_value=_optional(v, "serving_value"),
                candidate_value=_optional(v, "candidate_value"),
                relative_change=_optional(v, "relative_change"),
                rows=v.rows,
                passed=v.passed,
                reason=v.reason,
                source=v.source,
            )
            for v in message.tasks
        ],
    )


def decode_model_info(message: pb.GetModelInfoResponse) -> ModelInfo:
    """``unirank.v1.GetModelInfoResponse`` -> domain model info."""
    return ModelInfo(
        model_version=message.model_version,
        schema_version=message.schema_version,
        profile=message.profile,
        backend=message.backend,
        device=message.device,
        tasks=[
            TaskInfo(
                task_type=task_type_name(task.task_type),
                served=task.served,
                offline_metrics=dict(sorted(task.offline_metrics.items())),
            )
            for task in message.tasks
        ],
        created_unix_ms=message.created_unix_ms,
        catalog_size=message.catalog_size,
        last_gate=decode_gate(message.last_gate) if message.HasField("last_gate") else None,
    )


def encode_events(events: Sequence[Event]) -> pb.RecordEventsRequest:
    return pb.RecordEventsRequest(
        events=[
            pb.Event(
                user_id=e.user_id,
                item_id=e.item_id,
                event_type=enum_value(pb.EventType, "EVENT_TYPE_", e.event_type),  # type: ignore[arg-type]
                event_time_unix_ms=e.event_time_unix_ms,
                event_id=e.event_id,
                impression_id=e.impression_id,
                position=e.position,
                engagement_seconds=e.engagement_seconds,
            )
            for e in events
        ]
    )


def decode_recorded(message: pb.RecordEventsResponse) -> RecordedEvents:
    return RecordedEvents(
        accepted=message.accepted,
        ignored=message.ignored,
        attributed=message.attributed,
        unattributed=message.unattributed,
    )
