"""The OpenTelemetry semantic-convention names UniRank emits, and the gRPC server error rules.

Pinned to Semantic Conventions 1.44.0 (the newest schema in opentelemetry-semantic-conventions
0.66b2): RPC spans and metrics use ``rpc.system.name``, the fully qualified ``rpc.method``
(``package.Service/Method``) and the string ``rpc.response.status_code``. Spelled out here rather
than imported from the package's ``_incubating`` modules, which may rename them in any release.
"""

from __future__ import annotations

import grpc

SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
SEMCONV_VERSION = "1.44.0"

# RPC (docs/rpc/rpc-spans.md, docs/rpc/grpc.md)
RPC_SYSTEM_NAME = "rpc.system.name"
RPC_METHOD = "rpc.method"
RPC_RESPONSE_STATUS_CODE = "rpc.response.status_code"
RPC_SERVER_CALL_DURATION = "rpc.server.call.duration"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
NETWORK_PEER_ADDRESS = "network.peer.address"
NETWORK_PEER_PORT = "network.peer.port"
NETWORK_TRANSPORT = "network.transport"
SERVICE_NAME = "service.name"
SERVICE_VERSION = "service.version"

# UniRank's own attributes: every span carries the first three.
TASK_TYPE = "unirank.task_type"
PROFILE = "unirank.profile"
MODEL_VERSION = "unirank.model.version"
REQUEST_ID = "unirank.request_id"
STAGE = "unirank.stage"
CACHE_HIT = "unirank.cache.hit"
CACHE_RESULT = "unirank.cache.result"
MEMORY_STORE = "unirank.memory.store"
EVICTION_REASON = "unirank.memory.eviction_reason"
FALLBACK = "unirank.fallback"
FALLBACK_REASON = "unirank.fallback.reason"
FALLBACK_DETAIL = "unirank.fallback.detail"
SERVED_BY = "unirank.served_by"
RELOAD_OUTCOME = "unirank.reload.outcome"
GATE_VERDICT = "unirank.gate.verdict"
CANDIDATES = "unirank.candidates"
RESULTS = "unirank.results"
TOP_SCORE = "unirank.score.top"
BATCH_SIZE = "unirank.batch.size"
BATCH_TASK_TYPES = "unirank.batch.task_types"
BATCH_MAX_QUEUE_WAIT = "unirank.batch.max_queue_wait_s"
BACKEND = "unirank.backend"
DEVICE = "unirank.device"
ARM = "unirank.arm"
KPI_EVENT = "unirank.kpi.event"
KPI_POSITION = "unirank.kpi.position"
KPI_UNATTRIBUTED_REASON = "unirank.kpi.unattributed_reason"

# Pseudo task labels for RPCs that are not about exactly one use-case.
TASK_UNSPECIFIED = "unspecified"
"""GetModelInfo, and requests that name no use-case (rejected as INVALID_ARGUMENT)."""
TASK_MIXED = "mixed"
"""A RecommendBatch whose members belong to several use-cases (each member is labelled by its own)."""

SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
"""The codes a gRPC *server* span reports as errors; every other code (INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, ...) is the caller's problem and leaves the span status unset."""


def is_server_error(code: grpc.StatusCode) -> bool:
    return code in SERVER_ERROR_CODES
