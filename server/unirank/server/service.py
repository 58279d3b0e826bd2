"""Thin gRPC servicer: protobuf -> domain, call the pipeline, domain -> protobuf."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from unirank.artifact.tasks import TASKS
from unirank.server import codec
from unirank.server.errors import InvalidArgument, RolloutRefused, ServingError
from unirank.server.gate import OfflineGate
from unirank.server.interceptors import abort_with
from unirank.server.pipeline import RankingPipeline
from unirank.server.rollout.controller import RolloutController, RolloutRefusedError
from unirank.server.rollout.state import PROMOTED, ROLLED_BACK, Rollout
from unirank.server.telemetry import Telemetry
from unirank.server.telemetry.workers import StatsExchange, merge_stats
from unirank.v1 import recommender_pb2 as pb
from unirank.v1 import recommender_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from unirank.server.admission import Admission


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    def __init__(
        self,
        pipeline: RankingPipeline,
        telemetry: Telemetry,
        admission: Admission,
        peers: StatsExchange | None = None,
        rollout: RolloutController | None = None,
        gate: OfflineGate | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._telemetry = telemetry
        self._admission = admission
        self._peers = peers
        """Under ``--workers``: where the other workers' counters are, to answer for the group."""
        self._rollout = rollout
        self._gate = gate

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        rank_request = codec.request_from_pb(request)
        response = await self._pipeline.recommend(rank_request, _deadline(context))
        return codec.response_to_pb(response, rank_request.options.debug)

    async def RecommendBatch(
        self, request: pb.RecommendBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchResponse:
        self._pipeline.check_batch_size(len(request.requests))  # before reading any member
        rank_requests = [codec.request_from_pb(r, f"requests[{i}].") for i, r in enumerate(request.requests)]
        outcomes = await self._pipeline.recommend_batch(rank_requests, _deadline(context), self._admission)
        return codec.batch_response_to_pb(rank_requests, outcomes)

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
        last_gate = self._gate.last if self._gate is not None else None
        return codec.model_info_to_pb(self._pipeline.model_info(), last_gate)

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

    # Rollout commands are not admission-controlled (an operator's abort must work under overload):
    # the interceptor authenticates them, so errors are answered here.

    async def GetRolloutStatus(
        self, request: pb.GetRolloutStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRolloutStatusResponse:
        rollout = self._rollout.rollout if self._rollout is not None else None
        return pb.GetRolloutStatusResponse(rollout=codec.rollout_to_pb(rollout))

    async def StartRollout(
        self, request: pb.StartRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartRolloutResponse:
        rollout = await self._command(context, None)
        return pb.StartRolloutResponse(rollout=codec.rollout_to_pb(rollout))

    async def PromoteRollout(
        self, request: pb.PromoteRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.PromoteRolloutResponse:
        rollout = await self._command(context, PROMOTED, request.tasks)
        return pb.PromoteRolloutResponse(rollout=codec.rollout_to_pb(rollout))

    async def AbortRollout(
        self, request: pb.AbortRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortRolloutResponse:
        rollout = await self._command(context, ROLLED_BACK, request.tasks)
        return pb.AbortRolloutResponse(rollout=codec.rollout_to_pb(rollout))

    async def _command(
        self, context: grpc.aio.ServicerContext, status: str | None, tasks: Sequence[str] = ()
    ) -> Rollout:
        """Start a rollout (``status`` None), or promote / roll back ``tasks``; errors answered here."""
        try:
            unknown = sorted(set(tasks) - {spec.name for spec in TASKS})
            if unknown:
                known = ", ".join(spec.name for spec in TASKS)
                raise InvalidArgument.single(
                    "tasks", f"unknown use-case(s) {', '.join(unknown)}; known: {known}"
                )
            if self._rollout is None:
                raise RolloutRefused("rollouts are off in this profile ([rollout] enabled)")
            try:
                if status is None:
                    return await self._rollout.start()
                return await self._rollout.command(status, tasks)
            except RolloutRefusedError as exc:
                raise RolloutRefused(str(exc)) from exc
        except ServingError as error:
            await abort_with(context, error)
            raise AssertionError("abort_with returned") from error
