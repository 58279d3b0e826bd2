"""Typed Python clients (sync and async) and the command line for the UniRank gRPC API.

May import: ``unirank.v1`` (the generated stubs), grpcio and protobuf; never numpy, torch,
onnxruntime or any other ``unirank`` package (it ships alone as ``unirank-client``).
"""

from unirank.client._common import DEFAULT_TIMEOUT_S, RequestFields
from unirank.client.aio import AsyncRecommenderClient
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
from unirank.client.errors import BatchMemberError, UniRankError
from unirank.client.overload import (
    DEFAULT_THROTTLE_K,
    THROTTLED_LOCALLY,
    AdaptiveConcurrencyLimit,
    AdaptiveThrottle,
)
from unirank.client.sync import RecommenderClient

__all__ = [
    "DEFAULT_THROTTLE_K",
    "DEFAULT_TIMEOUT_S",
    "THROTTLED_LOCALLY",
    "AdaptiveConcurrencyLimit",
    "AdaptiveThrottle",
    "AsyncRecommenderClient",
    "BatchMemberError",
    "Category",
    "Event",
    "GateDecision",
    "GateVerdict",
    "ModelInfo",
    "NewReleases",
    "Notification",
    "RankedItem",
    "Ranking",
    "RecommendationRequest",
    "RecommenderClient",
    "RecordedEvents",
    "RelatedItems",
    "RequestFields",
    "Search",
    "Task",
    "TaskInfo",
    "UniRankError",
]
