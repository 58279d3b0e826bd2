"""What every section of the stress report shares: the repository, number formats, Markdown
tables, one health check, the error of a call that should fail, and a log capture."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from unirank.client import UniRankError

REPO = Path(__file__).resolve().parents[2]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


async def error_of(call: Callable[[], Any]) -> str:
    """``CODE (REASON): message`` of a call that should fail, or ``OK``."""
    try:
        await call()
    except UniRankError as error:
        reason = f" ({error.reason})" if error.reason else ""
        return f"{error.code}{reason}: {error.message[:90]}"
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name}: {(error.details() or '')[:90]}"
    return "OK"


async def health(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


class Capture(logging.Handler):
    """Every log record, as ``LEVEL logger: message`` lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
