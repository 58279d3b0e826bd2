"""What the sync and async clients share: channel setup, call metadata, request building, health codec."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from unirank.client import codec
from unirank.client.domain import Ranking, RecommendationRequest, Task
from unirank.client.errors import BatchMemberError, UniRankError, error_from_member_status
from unirank.v1 import recommender_pb2 as pb

DEFAULT_TIMEOUT_S = 2.0
"""Deadline of every call unless the client or the call says otherwise."""


def batch_outcomes(response: pb.RecommendBatchResponse) -> list[Ranking | UniRankError]:
    """Each member's ranking, or its own error, in request order."""
    statuses = response.statuses
    outcomes: list[Ranking | UniRankError] = []
    for index, item in enumerate(response.responses):
        error = error_from_member_status(statuses[index]) if index < len(statuses) else None
        outcomes.append(error if error is not None else codec.decode_ranking(item))
    return outcomes


def batch_rankings(response: pb.RecommendBatchResponse) -> list[Ranking]:
    """Every member's ranking; :class:`BatchMemberError` (with all outcomes) if any member failed."""
    outcomes = batch_outcomes(response)
    rankings = [outcome for outcome in outcomes if isinstance(outcome, Ranking)]
    if len(rankings) != len(outcomes):
        raise BatchMemberError(outcomes)
    return rankings


HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


class RequestFields(TypedDict, total=False):
    """Per-request fields every use-case method accepts as keyword arguments."""

    max_results: int
    """How many items to return; 0 (default) means the profile's default."""
    candidate_item_ids: Sequence[str]
    """Candidates to rank instead of running retrieval."""
    excluded_item_ids: Sequence[str]
    """Items that must not appear in the response."""
    debug: bool
    """Ask for per-stage timings and each item's retrieval source."""
    request_id: str
    """Caller's id for this request; echoed back."""
    country: str
    """ISO 3166-1 alpha-2 country code, e.g. "US"."""
    language: str
    """BCP 47 language tag, e.g. "en"."""
    device: str
    """Free-form device class, e.g. "tv", "mobile", "web"."""
    event_time_unix_ms: int
    """When the request happened, Unix milliseconds; 0 means now."""


def _ids(name: str, ids: Sequence[str]) -> tuple[str, ...]:
    # A bare string is a Sequence[str] too, and would silently become one id per character.
    if isinstance(ids, str):
        raise TypeError(f"{name} must be a sequence of item ids, not a single string: {ids!r}")
    return tuple(ids)


def build_request(
    task: Task, *, user_id: str, history_item_ids: Sequence[str], fields: RequestFields
) -> RecommendationRequest:
    """The domain request a use-case method sends."""
    return RecommendationRequest(
        task=task,
        user_id=user_id,
        history_item_ids=_ids("history_item_ids", history_item_ids),
        request_id=fields.get("request_id", ""),
        country=fields.get("country", ""),
        language=fields.get("language", ""),
        device=fields.get("device", ""),
        event_time_unix_ms=fields.get("event_time_unix_ms", 0),
        max_results=fields.get("max_results", 0),
        candidate_item_ids=_ids("candidate_item_ids", fields.get("candidate_item_ids", ())),
        excluded_item_ids=_ids("excluded_item_ids", fields.get("excluded_item_ids", ())),
        debug=fields.get("debug", False),
    )


def to_message(request: pb.RecommendRequest | RecommendationRequest) -> pb.RecommendRequest:
    """Accept either form at the public API; the wire wants protobuf."""
    return request if isinstance(request, pb.RecommendRequest) else codec.encode_request(request)


def channel_credentials(
    credentials: grpc.ChannelCredentials | None, root_certificates: bytes | None, tls: bool
) -> grpc.ChannelCredentials | None:
    """The credentials of a secure channel, or None for plaintext."""
    if credentials is not None:
        return credentials
    if tls or root_certificates is not None:
        # None root certificates means the system's trust store.
        return grpc.ssl_channel_credentials(root_certificates=root_certificates)
    return None


def _trace_injector() -> Callable[..., None] | None:
    # opentelemetry-api is optional: without it the client sends no trace context at all.
    try:
        from opentelemetry import propagate
    except ImportError:
        return None
    return propagate.inject


@dataclass(frozen=True)
class CallSettings:
    """Deadline and metadata of a client's calls."""

    default_timeout_s: float | None
    """Deadline applied to a call that names none; None means no deadline."""
    metadata: tuple[tuple[str, str], ...]
    """Sent with every call (e.g. the bearer token)."""
    inject_trace_context: Callable[..., None] | None
    """OpenTelemetry's propagator inject, when opentelemetry-api is importable."""

    @classmethod
    def create(
        cls,
        *,
        timeout: float | None,
        bearer_token: str | None,
        metadata: Sequence[tuple[str, str]],
    ) -> CallSettings:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        # gRPC rejects upper-case metadata keys at call time; fail at construction instead.
        pairs = [(key.lower(), value) for key, value in metadata]
        if bearer_token:
            pairs.append(("authorization", f"Bearer {bearer_token}"))
        return cls(timeout, tuple(pairs), _trace_injector())

    def timeout(self, per_call: float | None) -> float | None:
        """The deadline of one call: its own if given, else the client's default."""
        return per_call if per_call is not None else self.default_timeout_s

    def call_metadata(self) -> list[tuple[str, str]]:
        """Metadata of one call: the client's, plus W3C trace context of the current span."""
        pairs = list(self.metadata)
        if self.inject_trace_context is not None:
            carrier: dict[str, str] = {}
            self.inject_trace_context(carrier)
            pairs += [(key.lower(), value) for key, value in carrier.items()]
        return pairs


@dataclass(frozen=True)
class HealthCodec:
    """``grpc.health.v1`` Check messages, built here so the client needs no grpcio-health-checking."""

    request_class: type[Message]
    response_class: type[Message]

    @classmethod
    def create(cls) -> HealthCodec:
        field = descriptor_pb2.FieldDescriptorProto
        proto = descriptor_pb2.FileDescriptorProto(
            name="grpc/health/v1/health.proto", package="grpc.health.v1", syntax="proto3"
        )
        request = proto.message_type.add(name="HealthCheckRequest")
        request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
        response = proto.message_type.add(name="HealthCheckResponse")
        status = response.enum_type.add(name="ServingStatus")
        for number, name in enumerate(["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]):
            status.value.add(name=name, number=number)
        response.field.add(
            name="status",
            number=1,
            type=field.TYPE_ENUM,
            type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
            label=field.LABEL_OPTIONAL,
        )
        # A private pool: the default one may already hold grpc_health's own copy of this file.
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        return cls(
            message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")),
        )

    def request(self, service: str) -> Message:
        # Through the generic text form: the message class is built at run time, so a typed
        # keyword argument is unknown to the type checker.
        return json_format.ParseDict({"service": service}, self.request_class())

    def status_name(self, response: Message) -> str:
        """``"SERVING"``, ``"NOT_SERVING"``, ...; a number this client does not know as text."""
        number: int = response.status  # type: ignore[attr-defined]
        enum = response.DESCRIPTOR.fields_by_name["status"].enum_type
        value = enum.values_by_number.get(number) if enum is not None else None
        return value.name if value is not None else str(number)
