import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    TASK_TYPE_NOTIFICATION: _ClassVar[TaskType]
    TASK_TYPE_RELATED_ITEMS: _ClassVar[TaskType]
    TASK_TYPE_SEARCH: _ClassVar[TaskType]
    TASK_TYPE_CATEGORY: _ClassVar[TaskType]
    TASK_TYPE_NEW_RELEASES: _ClassVar[TaskType]

class RetrievalSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETRIEVAL_SOURCE_UNSPECIFIED: _ClassVar[RetrievalSource]
    RETRIEVAL_SOURCE_CALLER: _ClassVar[RetrievalSource]
    RETRIEVAL_SOURCE_HISTORY: _ClassVar[RetrievalSource]
    RETRIEVAL_SOURCE_RELATED: _ClassVar[RetrievalSource]
    RETRIEVAL_SOURCE_LEXICAL: _ClassVar[RetrievalSource]
    RETRIEVAL_SOURCE_EMBEDDING: _ClassVar[RetrievalSource]
    RETRIEVAL_SOURCE_CATEGORY: _ClassVar[RetrievalSource]
    RETRIEVAL_SOURCE_POPULAR: _ClassVar[RetrievalSource]
    RETRIEVAL_SOURCE_NEW_RELEASES: _ClassVar[RetrievalSource]

class FallbackReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_REASON_UNSPECIFIED: _ClassVar[FallbackReason]
    FALLBACK_REASON_COLD_START: _ClassVar[FallbackReason]
    FALLBACK_REASON_DEADLINE: _ClassVar[FallbackReason]
    FALLBACK_REASON_BACKEND_ERROR: _ClassVar[FallbackReason]
    FALLBACK_REASON_NO_CANDIDATES: _ClassVar[FallbackReason]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_PLAY: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_SEARCH_CLICK: _ClassVar[EventType]
    EVENT_TYPE_NOTIFICATION_OPEN: _ClassVar[EventType]
    EVENT_TYPE_IMPRESSION: _ClassVar[EventType]
    EVENT_TYPE_PLAY_START: _ClassVar[EventType]
    EVENT_TYPE_PLAY_COMPLETE: _ClassVar[EventType]
TASK_TYPE_UNSPECIFIED: TaskType
TASK_TYPE_NOTIFICATION: TaskType
TASK_TYPE_RELATED_ITEMS: TaskType
TASK_TYPE_SEARCH: TaskType
TASK_TYPE_CATEGORY: TaskType
TASK_TYPE_NEW_RELEASES: TaskType
RETRIEVAL_SOURCE_UNSPECIFIED: RetrievalSource
RETRIEVAL_SOURCE_CALLER: RetrievalSource
RETRIEVAL_SOURCE_HISTORY: RetrievalSource
RETRIEVAL_SOURCE_RELATED: RetrievalSource
RETRIEVAL_SOURCE_LEXICAL: RetrievalSource
RETRIEVAL_SOURCE_EMBEDDING: RetrievalSource
RETRIEVAL_SOURCE_CATEGORY: RetrievalSource
RETRIEVAL_SOURCE_POPULAR: RetrievalSource
RETRIEVAL_SOURCE_NEW_RELEASES: RetrievalSource
FALLBACK_REASON_UNSPECIFIED: FallbackReason
FALLBACK_REASON_COLD_START: FallbackReason
FALLBACK_REASON_DEADLINE: FallbackReason
FALLBACK_REASON_BACKEND_ERROR: FallbackReason
FALLBACK_REASON_NO_CANDIDATES: FallbackReason
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_PLAY: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_SEARCH_CLICK: EventType
EVENT_TYPE_NOTIFICATION_OPEN: EventType
EVENT_TYPE_IMPRESSION: EventType
EVENT_TYPE_PLAY_START: EventType
EVENT_TYPE_PLAY_COMPLETE: EventType

class NotificationContext(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RelatedItemsContext(_message.Message):
    __slots__ = ("anchor_item_id",)
    ANCHOR_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    anchor_item_id: str
    def __init__(self, anchor_item_id: _Optional[str] = ...) -> None: ...

class SearchContext(_message.Message):
    __slots__ = ("query",)
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query: str
    def __init__(self, query: _Optional[str] = ...) -> None: ...

class CategoryContext(_message.Message):
    __slots__ = ("category_id",)
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    category_id: str
    def __init__(self, category_id: _Optional[str] = ...) -> None: ...

class NewReleasesContext(_message.Message):
    __slots__ = ("window_years",)
    WINDOW_YEARS_FIELD_NUMBER: _ClassVar[int]
    window_years: int
    def __init__(self, window_years: _Optional[int] = ...) -> None: ...

class RequestContext(_message.Message):
    __slots__ = ("request_id", "user_id", "country", "language", "device", "event_time_unix_ms", "history_item_ids", "notification", "related_items", "search", "category", "new_releases")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    RELATED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    NEW_RELEASES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    country: str
    language: str
    device: str
    event_time_unix_ms: int
    history_item_ids: _containers.RepeatedScalarFieldContainer[str]
    notification: NotificationContext
    related_items: RelatedItemsContext
    search: SearchContext
    category: CategoryContext
    new_releases: NewReleasesContext
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., country: _Optional[str] = ..., language: _Optional[str] = ..., device: _Optional[str] = ..., event_time_unix_ms: _Optional[int] = ..., history_item_ids: _Optional[_Iterable[str]] = ..., notification: _Optional[_Union[NotificationContext, _Mapping]] = ..., related_items: _Optional[_Union[RelatedItemsContext, _Mapping]] = ..., search: _Optional[_Union[SearchContext, _Mapping]] = ..., category: _Optional[_Union[CategoryContext, _Mapping]] = ..., new_releases: _Optional[_Union[NewReleasesContext, _Mapping]] = ...) -> None: ...

class RequestOptions(_message.Message):
    __slots__ = ("max_results", "candidate_item_ids", "excluded_item_ids", "debug")
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    max_results: int
    candidate_item_ids: _containers.RepeatedScalarFieldContainer[str]
    excluded_item_ids: _containers.RepeatedScalarFieldContainer[str]
    debug: bool
    def __init__(self, max_results: _Optional[int] = ..., candidate_item_ids: _Optional[_Iterable[str]] = ..., excluded_item_ids: _Optional[_Iterable[str]] = ..., debug: _Optional[bool] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("context", "options")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    context: RequestContext
    options: RequestOptions
    def __init__(self, context: _Optional[_Union[RequestContext, _Mapping]] = ..., options: _Optional[_Union[RequestOptions, _Mapping]] = ...) -> None: ...

class RankedItem(_message.Message):
    __slots__ = ("item_id", "score", "title", "category_id", "retrieval_source")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    title: str
    category_id: str
    retrieval_source: RetrievalSource
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., title: _Optional[str] = ..., category_id: _Optional[str] = ..., retrieval_source: _Optional[_Union[RetrievalSource, str]] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "duration_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    duration_ms: float
    def __init__(self, stage: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("request_id", "task_type", "items", "model_version", "profile", "served_from_cache", "fallback", "fallback_reason", "fallback_detail", "timings", "stored_history", "impression_id", "arm")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SERVED_FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_DETAIL_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    STORED_HISTORY_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    task_type: TaskType
    items: _containers.RepeatedCompositeFieldContainer[RankedItem]
    model_version: str
    profile: str
    served_from_cache: bool
    fallback: bool
    fallback_reason: FallbackReason
    fallback_detail: str
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    stored_history: bool
    impression_id: str
    arm: str
    def __init__(self, request_id: _Optional[str] = ..., task_type: _Optional[_Union[TaskType, str]] = ..., items: _Optional[_Iterable[_Union[RankedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., profile: _Optional[str] = ..., served_from_cache: _Optional[bool] = ..., fallback: _Optional[bool] = ..., fallback_reason: _Optional[_Union[FallbackReason, str]] = ..., fallback_detail: _Optional[str] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., stored_history: _Optional[bool] = ..., impression_id: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class RecommendBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecommendRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecommendRequest, _Mapping]]] = ...) -> None: ...

class RecommendBatchResponse(_message.Message):
    __slots__ = ("responses", "statuses")
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RecommendResponse]
    statuses: _containers.RepeatedCompositeFieldContainer[MemberStatus]
    def __init__(self, responses: _Optional[_Iterable[_Union[RecommendResponse, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[MemberStatus, _Mapping]]] = ...) -> None: ...

class MemberStatus(_message.Message):
    __slots__ = ("code", "message", "reason", "retry_delay")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    retry_delay: _duration_pb2.Duration
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., retry_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_type", "served", "offline_metrics")
    class OfflineMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_METRICS_FIELD_NUMBER: _ClassVar[int]
    task_type: TaskType
    served: bool
    offline_metrics: _containers.ScalarMap[str, float]
    def __init__(self, task_type: _Optional[_Union[TaskType, str]] = ..., served: _Optional[bool] = ..., offline_metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_version", "schema_version", "profile", "backend", "device", "tasks", "created_unix_ms", "catalog_size", "last_gate")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_GATE_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    schema_version: str
    profile: str
    backend: str
    device: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    created_unix_ms: int
    catalog_size: int
    last_gate: GateDecision
    def __init__(self, model_version: _Optional[str] = ..., schema_version: _Optional[str] = ..., profile: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., created_unix_ms: _Optional[int] = ..., catalog_size: _Optional[int] = ..., last_gate: _Optional[_Union[GateDecision, _Mapping]] = ...) -> None: ...

class GateDecision(_message.Message):
    __slots__ = ("model_version", "serving_version", "accepted", "decided_unix_ms", "tasks")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DECIDED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    serving_version: str
    accepted: bool
    decided_unix_ms: int
    tasks: _containers.RepeatedCompositeFieldContainer[GateTaskVerdict]
    def __init__(self, model_version: _Optional[str] = ..., serving_version: _Optional[str] = ..., accepted: _Optional[bool] = ..., decided_unix_ms: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[GateTaskVerdict, _Mapping]]] = ...) -> None: ...

class GateTaskVerdict(_message.Message):
    __slots__ = ("task", "metric", "serving_value", "candidate_value", "relative_change", "rows", "passed", "reason", "source")
    TASK_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SERVING_VALUE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VALUE_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    task: str
    metric: str
    serving_value: float
    candidate_value: float
    relative_change: float
    rows: int
    passed: bool
    reason: str
    source: str
    def __init__(self, task: _Optional[str] = ..., metric: _Optional[str] = ..., serving_value: _Optional[float] = ..., candidate_value: _Optional[float] = ..., relative_change: _Optional[float] = ..., rows: _Optional[int] = ..., passed: _Optional[bool] = ..., reason: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class GetServingStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskServingStats(_message.Message):
    __slots__ = ("task", "rpcs_by_code", "latency_bucket_counts", "latency_sum_s", "in_flight", "served_by_model", "served_by_cache", "served_by_fallback", "fallbacks_by_reason", "cache_hits", "cache_misses", "drift", "kpis")
    class RpcsByCodeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FallbacksByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TASK_FIELD_NUMBER: _ClassVar[int]
    RPCS_BY_CODE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_S_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_CACHE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    KPIS_FIELD_NUMBER: _ClassVar[int]
    task: str
    rpcs_by_code: _containers.ScalarMap[str, int]
    latency_bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    latency_sum_s: float
    in_flight: int
    served_by_model: int
    served_by_cache: int
    served_by_fallback: int
    fallbacks_by_reason: _containers.ScalarMap[str, int]
    cache_hits: int
    cache_misses: int
    drift: ScoreDrift
    kpis: _containers.RepeatedCompositeFieldContainer[TaskKpis]
    def __init__(self, task: _Optional[str] = ..., rpcs_by_code: _Optional[_Mapping[str, int]] = ..., latency_bucket_counts: _Optional[_Iterable[int]] = ..., latency_sum_s: _Optional[float] = ..., in_flight: _Optional[int] = ..., served_by_model: _Optional[int] = ..., served_by_cache: _Optional[int] = ..., served_by_fallback: _Optional[int] = ..., fallbacks_by_reason: _Optional[_Mapping[str, int]] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., drift: _Optional[_Union[ScoreDrift, _Mapping]] = ..., kpis: _Optional[_Iterable[_Union[TaskKpis, _Mapping]]] = ...) -> None: ...

class TaskKpis(_message.Message):
    __slots__ = ("model_version", "arm", "impressions", "clicks", "plays", "play_completes", "views", "engagement_seconds_sum", "click_positions")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    PLAYS_FIELD_NUMBER: _ClassVar[int]
    PLAY_COMPLETES_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    ENGAGEMENT_SECONDS_SUM_FIELD_NUMBER: _ClassVar[int]
    CLICK_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    arm: str
    impressions: int
    clicks: int
    plays: int
    play_completes: int
    views: int
    engagement_seconds_sum: float
    click_positions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model_version: _Optional[str] = ..., arm: _Optional[str] = ..., impressions: _Optional[int] = ..., clicks: _Optional[int] = ..., plays: _Optional[int] = ..., play_completes: _Optional[int] = ..., views: _Optional[int] = ..., engagement_seconds_sum: _Optional[float] = ..., click_positions: _Optional[_Iterable[int]] = ...) -> None: ...

class ScoreDrift(_message.Message):
    __slots__ = ("has_reference", "window_samples", "psi", "bin_edges", "reference_fractions", "live_fractions")
    HAS_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    BIN_EDGES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FRACTIONS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FRACTIONS_FIELD_NUMBER: _ClassVar[int]
    has_reference: bool
    window_samples: int
    psi: float
    bin_edges: _containers.RepeatedScalarFieldContainer[float]
    reference_fractions: _containers.RepeatedScalarFieldContainer[float]
    live_fractions: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, has_reference: _Optional[bool] = ..., window_samples: _Optional[int] = ..., psi: _Optional[float] = ..., bin_edges: _Optional[_Iterable[float]] = ..., reference_fractions: _Optional[_Iterable[float]] = ..., live_fractions: _Optional[_Iterable[float]] = ...) -> None: ...

class GetServingStatsResponse(_message.Message):
    __slots__ = ("model_version", "profile", "uptime_s", "latency_bucket_bounds_s", "tasks", "unattributed_events_by_reason")
    class UnattributedEventsByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKET_BOUNDS_S_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    UNATTRIBUTED_EVENTS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    profile: str
    uptime_s: float
    latency_bucket_bounds_s: _containers.RepeatedScalarFieldContainer[float]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskServingStats]
    unattributed_events_by_reason: _containers.ScalarMap[str, int]
    def __init__(self, model_version: _Optional[str] = ..., profile: _Optional[str] = ..., uptime_s: _Optional[float] = ..., latency_bucket_bounds_s: _Optional[_Iterable[float]] = ..., tasks: _Optional[_Iterable[_Union[TaskServingStats, _Mapping]]] = ..., unattributed_events_by_reason: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("user_id", "item_id", "event_type", "event_time_unix_ms", "event_id", "impression_id", "position", "engagement_seconds")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ENGAGEMENT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    event_type: EventType
    event_time_unix_ms: int
    event_id: str
    impression_id: str
    position: int
    engagement_seconds: float
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., event_time_unix_ms: _Optional[int] = ..., event_id: _Optional[str] = ..., impression_id: _Optional[str] = ..., position: _Optional[int] = ..., engagement_seconds: _Optional[float] = ...) -> None: ...

class RecordEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("accepted", "ignored", "attributed", "unattributed")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    IGNORED_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    UNATTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    ignored: int
    attributed: int
    unattributed: int
    def __init__(self, accepted: _Optional[int] = ..., ignored: _Optional[int] = ..., attributed: _Optional[int] = ..., unattributed: _Optional[int] = ...) -> None: ...

class RolloutTask(_message.Message):
    __slots__ = ("task", "status", "canary_percent", "step", "stable_version", "verdict", "reason", "e_value", "canary_impressions", "canary_clicks", "stable_impressions", "stable_clicks")
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    E_VALUE_FIELD_NUMBER: _ClassVar[int]
    CANARY_IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    CANARY_CLICKS_FIELD_NUMBER: _ClassVar[int]
    STABLE_IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    STABLE_CLICKS_FIELD_NUMBER: _ClassVar[int]
    task: str
    status: str
    canary_percent: float
    step: int
    stable_version: str
    verdict: str
    reason: str
    e_value: float
    canary_impressions: int
    canary_clicks: int
    stable_impressions: int
    stable_clicks: int
    def __init__(self, task: _Optional[str] = ..., status: _Optional[str] = ..., canary_percent: _Optional[float] = ..., step: _Optional[int] = ..., stable_version: _Optional[str] = ..., verdict: _Optional[str] = ..., reason: _Optional[str] = ..., e_value: _Optional[float] = ..., canary_impressions: _Optional[int] = ..., canary_clicks: _Optional[int] = ..., stable_impressions: _Optional[int] = ..., stable_clicks: _Optional[int] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("rollout_id", "state", "canary_version", "steps_percent", "tasks", "started_unix_ms", "finished_unix_ms", "retrain_request")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    state: str
    canary_version: str
    steps_percent: _containers.RepeatedScalarFieldContainer[float]
    tasks: _containers.RepeatedCompositeFieldContainer[RolloutTask]
    started_unix_ms: int
    finished_unix_ms: int
    retrain_request: str
    def __init__(self, rollout_id: _Optional[str] = ..., state: _Optional[str] = ..., canary_version: _Optional[str] = ..., steps_percent: _Optional[_Iterable[float]] = ..., tasks: _Optional[_Iterable[_Union[RolloutTask, _Mapping]]] = ..., started_unix_ms: _Optional[int] = ..., finished_unix_ms: _Optional[int] = ..., retrain_request: _Optional[str] = ...) -> None: ...

class GetRolloutStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRolloutStatusResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutStatus
    def __init__(self, rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutStatus
    def __init__(self, rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class PromoteRolloutRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tasks: _Optional[_Iterable[str]] = ...) -> None: ...

class PromoteRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutStatus
    def __init__(self, rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class AbortRolloutRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tasks: _Optional[_Iterable[str]] = ...) -> None: ...

class AbortRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutStatus
    def __init__(self, rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...
