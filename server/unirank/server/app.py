"""The composition root: builds and runs one UniRank server from a profile and an artifact."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from unirank.server.config import Profile
from unirank.server.interceptors import Admission, ErrorInterceptor
from unirank.server.pipeline import RankingPipeline
from unirank.server.runtime import ModelRuntime
from unirank.server.service import RecommenderServicer
from unirank.v1 import recommender_pb2 as pb
from unirank.v1 import recommender_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name


class UniRankServer:
    """One process serving one profile. ``start`` returns once health says SERVING."""

    def __init__(
        self, profile: Profile, artifact_path: str | Path, host: str | None = None, port: int | None = None
    ):
        self.profile = profile
        self.artifact_path = Path(artifact_path)
        self.host = host if host is not None else profile.server.host
        self.requested_port = port if port is not None else profile.server.port
        self.port = 0
        self.admission = Admission(profile.server.max_concurrent_rpcs)
        self.health = health.aio.HealthServicer()
        self.pipeline: RankingPipeline | None = None
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        runtime = await ModelRuntime.load(self.artifact_path, self.profile.model)
        self.pipeline = RankingPipeline(self.profile, runtime)
        limits = self.profile.server
        server = grpc.aio.server(
            interceptors=[ErrorInterceptor(self.admission)],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", limits.max_message_bytes),
                ("grpc.max_send_message_length", limits.max_message_bytes),
            ],
        )
        pb_grpc.add_RecommenderServiceServicer_to_server(
            RecommenderServicer(self.pipeline, limits.max_batch_requests), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if limits.reflection:
            reflection.enable_server_reflection(
                (
                    SERVICE_NAME,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                server,
            )
        self.port = server.add_insecure_port(f"{self.host}:{self.requested_port}")
        if self.port == 0:
            raise RuntimeError(f"cannot bind {self.host}:{self.requested_port}")
        await server.start()
        self._server = server
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving profile %s, model %s on %s", self.profile.name, runtime.version, self.address)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new RPCs, let in-flight ones finish within the grace period."""
        grace = self.profile.server.grace_period_s if grace_s is None else grace_s
        self.admission.draining = True
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        until = loop.time() + grace
        while self.admission.in_flight > 0 and loop.time() < until:
            await asyncio.sleep(0.01)
        if self._server is not None:
            await self._server.stop(max(0.0, until - loop.time()))
        if self.pipeline is not None:
            await self.pipeline.runtime.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
