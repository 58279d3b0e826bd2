"""Garbage bytes to any method are refused as INVALID_ARGUMENT, not UNKNOWN with a traceback, and
logged at most once per method and interval (issue 13, finding 10)."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from ..conftest import profile_with, running_server

GARBAGE = b"\xff\xff\xff\xff\x0f"
"""Not a protobuf message: a varint field key that never ends."""


async def test_garbage_to_any_method_is_invalid_argument_with_at_most_one_log_line(
    artifact_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 5
    async with (
        running_server(profile_with(server={"reflection": True}), artifact_dir) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        codes: dict[str, set[grpc.StatusCode]] = {}

        async def record(path: str, send) -> None:  # type: ignore[no-untyped-def]
            try:
                await send()
                codes.setdefault(path, set()).add(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.setdefault(path, set()).add(error.code())

        async def drain(call) -> None:  # type: ignore[no-untyped-def]
            async for _ in call:
                pass

        unary = ("/unirank.v1.RecommenderService/GetServingStats", "/grpc.health.v1.Health/Check")
        watch = "/grpc.health.v1.Health/Watch"
        reflect = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        with caplog.at_level(logging.INFO):
            for _ in range(calls):
                for path in unary:
                    await record(path, lambda p=path: channel.unary_unary(p)(GARBAGE, timeout=5))
                await record(watch, lambda: drain(channel.unary_stream(watch)(GARBAGE, timeout=5)))
                await record(
                    reflect, lambda: drain(channel.stream_stream(reflect)(iter([GARBAGE]), timeout=5))
                )
            # Well-formed calls still work.
            health = await channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5)
    assert codes == {path: {grpc.StatusCode.INVALID_ARGUMENT} for path in (*unary, watch, reflect)}
    assert health == b"\x08\x01"  # SERVING
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    refusals = [r for r in caplog.records if "does not parse" in r.getMessage()]
    assert len(refusals) <= 4  # one per method per interval, not one per call
