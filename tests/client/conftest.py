"""Client-test fixtures: a real grpc.aio server on port 0 running the echoing test double."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from tests.client.client_echo_server import EchoServicer, RunningServer
from unirank.v1 import recommender_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    loop = asyncio.new_event_loop()
    servicer = EchoServicer()
    started = threading.Event()
    holder: dict[str, object] = {}

    async def start() -> None:
        grpc_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_RecommenderServiceServicer_to_server(servicer, grpc_server)
        health = HealthServicer()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        await health.set("unirank.v1.RecommenderService", health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, grpc_server)
        holder["port"] = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        holder["server"] = grpc_server

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="unirank-test-server", daemon=True)
    thread.start()
    assert started.wait(timeout=30), "test server did not start"
    try:
        yield RunningServer(port=int(holder["port"]), servicer=servicer)  # type: ignore[call-overload]
    finally:
        grpc_server = holder["server"]
        asyncio.run_coroutine_threadsafe(grpc_server.stop(None), loop).result(timeout=10)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
