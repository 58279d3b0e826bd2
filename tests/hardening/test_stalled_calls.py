"""Calls that never send their request, and connections that never speak, are ended within the
profile's bounds instead of being held until the caller's deadline (issue 13, finding 6)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from unirank.client import AsyncRecommenderClient, UniRankError
from unirank.server.transport import server_options

from ..conftest import profile_with, running_server

RECOMMEND = "/unirank.v1.RecommenderService/Recommend"
GUARD_S = 20.0  # the caller's own deadline: far past every bound under test


async def _never() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()
    yield b""  # pragma: no cover - never reached


async def _stall(address: str, metadata: Any = None) -> grpc.aio.AioRpcError:
    """Open a Recommend call and never send its message; the error that ends it."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_unary(RECOMMEND)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call(_never(), timeout=GUARD_S, metadata=metadata)
    return ended.value


def _connections(**limits: Any) -> dict[str, Any]:
    return {"connections": {"first_message_timeout_ms": 300, **limits}}


async def test_a_call_without_its_message_is_ended_by_the_server(artifact_dir: Path) -> None:
    async with running_server(profile_with(server=_connections()), artifact_dir) as server:
        ended = await asyncio.gather(*(_stall(server.address) for _ in range(20)))
        assert server.first_message is not None and server.first_message.stalled == 20
        async with AsyncRecommenderClient(server.address, timeout=10) as client:
            assert await client.health() == "SERVING"
    for error in ended:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
        assert "first_message_timeout_ms" in (error.details() or "")


async def test_unauthenticated_stalled_calls_are_ended_too(artifact_dir: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("app:stalled-calls-token-0a1b2c3d\n")
    profile = profile_with(server=_connections(), security={"auth": "bearer", "tokens_file": str(tokens)})
    async with running_server(profile, artifact_dir) as server:
        errors = await asyncio.gather(
            _stall(server.address),
            _stall(server.address, metadata=[("authorization", "Bearer not-a-known-token-at-all")]),
        )
    assert [e.code() for e in errors] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2


async def test_stalled_calls_cannot_hold_every_place(artifact_dir: Path) -> None:
    profile = profile_with(server={"max_open_rpcs": 4, **_connections(first_message_timeout_ms=1500)})
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address, timeout=10, throttle_k=None) as client,
    ):
        item = server.pipeline.runtime.artifact.catalog.items.key(1)
        stalled = [asyncio.create_task(_stall(server.address)) for _ in range(4)]
        guard = server.first_message
        assert guard is not None
        while guard.waiting < 4:
            await asyncio.sleep(0.01)
        # gRPC's own limit refuses the newcomer at once, before any UniRank code runs for it ...
        with pytest.raises(UniRankError) as refused:
            await client.related_items(item)
        # ... and once the stalled calls are cut, there is room again.
        await asyncio.gather(*stalled)
        ranking = await client.related_items(item)
    assert refused.value.code == "RESOURCE_EXHAUSTED", refused.value
    assert ranking.items


async def test_a_connection_that_never_speaks_is_closed(artifact_dir: Path) -> None:
    profile = profile_with(server=_connections(handshake_timeout_ms=300))
    async with running_server(profile, artifact_dir) as server:
        host, port = server.address.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        with socket.create_connection((host, int(port))) as raw:
            raw.setblocking(False)
            received = b""
            async with asyncio.timeout(GUARD_S):
                while chunk := await loop.sock_recv(raw, 4096):  # no preface, no SETTINGS: ever
                    received += chunk
    # The server closed it (recv saw the end), well before the guard.
    assert len(received) < 4096


def test_the_profile_sets_grpcs_own_bounds() -> None:
    limits = profile_with(
        server=_connections(
            max_streams_per_connection=7,
            handshake_timeout_ms=1500,
            keepalive_time_s=30,
            keepalive_timeout_s=5,
            max_connection_idle_s=0,
            max_connection_age_s=600,
            max_connection_age_grace_s=3,
        )
    ).server
    options = dict(server_options(limits, reuse_port=False))
    assert options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.server_handshake_timeout_ms"] == 1500
    assert options["grpc.keepalive_time_ms"] == 30_000 and options["grpc.keepalive_timeout_ms"] == 5000
    assert "grpc.max_connection_idle_ms" not in options  # 0: never, which gRPC reads as absent
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert options["grpc.max_connection_age_grace_ms"] == 3000
