"""Thin gRPC servicer: protobuf -> domain, call the pipeline, domain -> protobuf."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc

from unirank.artifact.tasks import TASKS
from unirank.server import codec
from unirank.server.domain import RankRequest, RankResponse
from unirank.server.errors import InvalidArgument, ServingError, code_of
from unirank.server.pipeline import RankingPipeline
from unirank.server.telemetry import Telemetry
from unirank.server.telemetry.workers import StatsExchange, merge_stats
from unirank.v1 import recommender_pb2 as pb
from unirank.v1 import recommender_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from unirank.server.interceptors import Admission


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


def _member_status(outcome: RankResponse | ServingError) -> pb.MemberStatus:
    """OK for an answered member, else the status its error would give a call of its own."""
    if not isinstance(outcome, ServingError):
        return pb.MemberStatus()
    status = pb.MemberStatus(code=code_of(outcome).value[0], message=outcome.message, reason=outcome.reason)
    retry_after_s = getattr(outcome, "retry_after_s", None)
    if retry_after_s is not None:
        status.retry_delay.FromNanoseconds(int(retry_after_s * 1e9))
    return status


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    def __init__(
        self,
        pipeline: RankingPipeline,
        max_batch_requests: int,
        telemetry: Telemetry,
        admission: Admission,
        peers: StatsExchange | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._max_batch_requests = max_batch_requests
        self._telemetry = telemetry
        self._admission = admission
        self._peers = peers
        """Under ``--workers``: where the other workers' counters are, to answer for the group."""

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        rank_request = codec.request_from_pb(request)
        response = await self._pipeline.recommend(rank_request, _deadline(context))
        return codec.response_to_pb(response, rank_request.options.debug)

    async def RecommendBatch(
        self, request: pb.RecommendBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchResponse:
        if len(request.requests) > self._max_batch_requests:
            raise InvalidArgument.single(
                "requests", f"{len(request.requests)} requests, at most {self._max_batch_requests} per batch"
            )
        # Validate everything before doing any work, so a bad member fails fast and by name.
        rank_requests = [codec.request_from_pb(r, f"requests[{i}].") for i, r in enumerate(request.requests)]
        tasks = [self._pipeline.check(r, f"requests[{i}].").name for i, r in enumerate(rank_requests)]
        deadline = _deadline(context)
        # A failing member answers for itself; only a bug (not a ServingError) fails the call,
        # and the task group then cancels the other members instead of letting them run on.
        async with asyncio.TaskGroup() as group:
            members = [
                group.create_task(self._member(r, task, deadline))
                for r, task in zip(rank_requests, tasks, strict=True)
            ]
        outcomes = [member.result() for member in members]
        answer = pb.RecommendBatchResponse()
        for req, outcome in zip(rank_requests, outcomes, strict=True):
            if isinstance(outcome, ServingError):
                answer.responses.add()
            else:
                answer.responses.append(codec.response_to_pb(outcome, req.options.debug))
        if any(isinstance(outcome, ServingError) for outcome in outcomes):
            answer.statuses.extend(_member_status(outcome) for outcome in outcomes)
        return answer

    async def _member(
        self, request: RankRequest, task: str, deadline: float | None
    ) -> RankResponse | ServingError:
        """One RecommendBatch member: admitted on its own slot (deadline-aware, like a call of its
        own), ranked, and its error returned rather than raised so the others are still answered."""
        admission = self._admission
        loop = asyncio.get_running_loop()
        try:
            await admission.enter(task, None if deadline is None else deadline - loop.time())
        except ServingError as error:
            return error
        admitted_at = loop.time()
        try:
            response = await self._pipeline.recommend(request, deadline)
        except ServingError as error:
            return error
        finally:
            admission.exit()
        admission.served(task, loop.time() - admitted_at)
        return response

    async def RecordEvents(
        self, request: pb.RecordEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordEventsResponse:
        now_ms = int(time.time() * 1000)
        events = codec.events_from_pb(request, self._pipeline.profile.features.max_events_per_call, now_ms)
        feedback = codec.feedback_from_pb(request)
        accepted, ignored, attributed, unattributed = await self._pipeline.record_events(events, feedback)
        return pb.RecordEventsResponse(
            accepted=accepted, ignored=ignored, attributed=attributed, unattributed=unattributed
        )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        pipeline = self._pipeline
        runtime = pipeline.runtime
        artifact = runtime.artifact
        served = {t.task_type for t in TASKS if t.task_type in pipeline.tasks and runtime.has_head(t)}
        task_metrics = artifact.metrics.get("tasks", {})
        tasks = []
        for spec in TASKS:
            model_metrics = task_metrics.get(spec.name, {}).get("model", {})
            tasks.append(
                pb.TaskInfo(
                    task_type=int(spec.task_type),  # type: ignore[arg-type]
                    served=spec.task_type in served,
                    offline_metrics={k: float(v) for k, v in model_metrics.items()},
                )
            )
        return pb.GetModelInfoResponse(
            model_version=artifact.model_version,
            schema_version=artifact.schema_version,
            profile=pipeline.profile.name,
            backend=runtime.backend.name,
            device=runtime.backend.device,
            tasks=tasks,
            created_unix_ms=int(artifact.manifest.get("created_unix_ms", 0)),
            catalog_size=artifact.catalog.n_items,
        )

    async def GetServingStats(
        self, request: pb.GetServingStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServingStatsResponse:
        own = self.own_stats()
        if self._peers is None:
            return own
        self._peers.publish(own)
        drift_min_samples = self._pipeline.profile.telemetry.drift_min_samples
        return merge_stats(own, self._peers.peers(), drift_min_samples)

    def own_stats(self) -> pb.GetServingStatsResponse:
        """This process's counters (one worker's, under ``--workers``)."""
        return codec.serving_stats_to_pb(
            self._telemetry.stats, self._pipeline.runtime.version, self._pipeline.profile.name
        )
