"""An echoing test double of RecommenderService, so client tests see what really reached a server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from unirank.v1 import recommender_pb2 as pb
from unirank.v1 import recommender_pb2_grpc as pb_grpc

# request_id values that make the double misbehave on purpose.
FAIL_INVALID = "fail-invalid"
FAIL_UNAVAILABLE = "fail-unavailable"
SLOW = "slow"
CACHED_PREFIX = "cached"
SLOW_SECONDS = 1.0

_TASK_TYPES = {
    "notification": pb.TASK_TYPE_NOTIFICATION,
    "related_items": pb.TASK_TYPE_RELATED_ITEMS,
    "search": pb.TASK_TYPE_SEARCH,
    "category": pb.TASK_TYPE_CATEGORY,
    "new_releases": pb.TASK_TYPE_NEW_RELEASES,
}

MODEL_INFO = pb.GetModelInfoResponse(
    model_version="test-model-7",
    schema_version="1",
    profile="test-profile",
    backend="onnx",
    device="cpu",
    tasks=[
        pb.TaskInfo(task_type=pb.TASK_TYPE_SEARCH, served=True, offline_metrics={"ndcg@10": 0.5}),
        pb.TaskInfo(task_type=pb.TASK_TYPE_CATEGORY, served=False),
    ],
    created_unix_ms=1_700_000_000_000,
    catalog_size=1234,
)


def _rich_status(code: grpc.StatusCode, message: str, *details: object) -> tuple[tuple[str, bytes], ...]:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


def echo_context(context: pb.RequestContext) -> str:
    """What the double echoes of the common context fields, in ``fallback_detail``."""
    return (
        f"user={context.user_id} country={context.country} language={context.language} "
        f"device={context.device} history={','.join(context.history_item_ids)} "
        f"event_time={context.event_time_unix_ms}"
    )


@dataclass
class Seen:
    """One call as the server received it."""

    request: object
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class EchoServicer(pb_grpc.RecommenderServiceServicer):
    """Answers from the request itself, so a test can see what the client really sent.

    Items are the caller's candidates minus the exclusions, truncated to max_results, scored
    1, 1/2, 1/4, ... (exact in float32); the task's own text goes into each item's category;
    the common context fields come back in fallback_detail; no user id means a cold-start
    fallback; a request_id starting with "cached" is reported as served from the cache.
    """

    seen: list[Seen] = field(default_factory=list)

    def _record(self, request: object, context: grpc.aio.ServicerContext) -> None:
        metadata = {
            key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
        }
        self.seen.append(Seen(request, metadata, context.time_remaining()))

    async def _answer(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        request_context, options = request.context, request.options
        if request_context.request_id == FAIL_INVALID:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="context.search.query", description="must not be empty"
                    ),
                    error_details_pb2.BadRequest.FieldViolation(
                        field="options.max_results", description="must be <= 100"
                    ),
                ]
            )
            info = error_details_pb2.ErrorInfo(reason="INVALID_REQUEST", domain="unirank")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the request is invalid",
                trailing_metadata=_rich_status(
                    grpc.StatusCode.INVALID_ARGUMENT, "the request is invalid", bad_request, info
                ),
            )
        if request_context.request_id == FAIL_UNAVAILABLE:
            retry = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)
            )
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "model not ready",
                trailing_metadata=_rich_status(grpc.StatusCode.UNAVAILABLE, "model not ready", retry),
            )
        if request_context.request_id == SLOW:
            await asyncio.sleep(SLOW_SECONDS)

        which = request_context.WhichOneof("task")
        task_text = {
            "related_items": request_context.related_items.anchor_item_id,
            "search": request_context.search.query,
            "category": request_context.category.category_id,
        }.get(which or "", "")
        excluded = set(options.excluded_item_ids)
        item_ids = [item_id for item_id in options.candidate_item_ids if item_id not in excluded]
        if options.max_results:
            item_ids = item_ids[: options.max_results]
        source = pb.RETRIEVAL_SOURCE_CALLER if options.debug else pb.RETRIEVAL_SOURCE_UNSPECIFIED
        return pb.RecommendResponse(
            request_id=request_context.request_id,
            task_type=_TASK_TYPES.get(which or "", pb.TASK_TYPE_UNSPECIFIED),
            items=[
                pb.RankedItem(
                    item_id=item_id,
                    score=0.5**rank,
                    title=f"Title of {item_id}",
                    category_id=task_text,
                    retrieval_source=source,
                )
                for rank, item_id in enumerate(item_ids)
            ],
            model_version="test-model-7",
            profile="test-profile",
            served_from_cache=request_context.request_id.startswith(CACHED_PREFIX),
            fallback=not request_context.user_id,
            fallback_reason=pb.FALLBACK_REASON_COLD_START
            if not request_context.user_id
            else pb.FALLBACK_REASON_UNSPECIFIED,
            fallback_detail=echo_context(request_context),
            timings=[
                pb.StageTiming(stage="retrieve", duration_ms=1.5),
                pb.StageTiming(stage="score", duration_ms=2.25),
            ]
            if options.debug
            else [],
        )

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        self._record(request, context)
        return await self._answer(request, context)

    async def RecommendBatch(
        self, request: pb.RecommendBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchResponse:
        self._record(request, context)
        return pb.RecommendBatchResponse(
            responses=[await self._answer(item, context) for item in request.requests]
        )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        self._record(request, context)
        return MODEL_INFO


@dataclass
class RunningServer:
    """The test server, on its own thread and event loop so sync and async clients can both call it."""

    port: int
    servicer: EchoServicer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def last(self) -> Seen:
        return self.servicer.seen[-1]
