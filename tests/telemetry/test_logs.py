"""Log lines written while handling a request name its task type, request id and trace id."""

from __future__ import annotations

import io
import itertools
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from unirank.artifact import ModelInputs, load_artifact
from unirank.client import AsyncRecommenderClient
from unirank.client.domain import RecommendationRequest, Search
from unirank.server.backends.base import BackendError
from unirank.server.telemetry.logs import ThrottledLog, make_handler

from ..conftest import known_query, running_server
from .conftest import traced_server


class _Failing:
    name = "failing"
    device = "cpu"
    inline = False

    async def score(
        self, inputs: ModelInputs, deadline: float | None = None, *, tag: Any = None
    ) -> np.ndarray:
        raise BackendError("injected")

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@contextmanager
def captured_json_lines() -> Iterator[list[dict[str, Any]]]:
    stream = io.StringIO()
    handler = make_handler("json", stream)
    logger = logging.getLogger("unirank")
    logger.addHandler(handler)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        lines += [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_json_lines_carry_task_request_id_and_trace_id(artifact_dir: Path) -> None:
    query = known_query(load_artifact(artifact_dir))
    with captured_json_lines() as lines:
        async with traced_server("cpu-realtime", artifact_dir) as (server, captured):
            assert server.pipeline is not None
            server.pipeline.runtime.backend = _Failing()
            # The pipeline writes a repeated backend error once per 10 s (issue 13); here each
            # line's request context is under test, so every one is written (a clock that moves
            # a minute per reading).
            server.pipeline._backend_log = ThrottledLog(
                logging.getLogger("unirank.server.pipeline"), clock=itertools.count(step=60).__next__
            )
            async with AsyncRecommenderClient(server.address) as client:
                await client.search(query, request_id="req-log-1")
                await client.recommend_batch(
                    [
                        RecommendationRequest(Search(query + " y"), request_id="member-7"),
                        RecommendationRequest(Search(query + " z"), request_id="member-8"),
                    ]
                )
            logging.getLogger("unirank.test").warning("outside any request")
    warnings = [line for line in lines if line["message"].startswith("backend error")]
    assert len(warnings) == 3
    single, *members = warnings
    servers = [s for s in captured.finished() if s.kind is SpanKind.SERVER]
    assert single["task_type"] == "search" and single["request_id"] == "req-log-1"
    assert single["trace_id"] == f"{servers[0].context.trace_id:032x}"
    # Concurrent members of one RecommendBatch: each line names its own request.
    assert sorted(line["request_id"] for line in members) == ["member-7", "member-8"]
    for line in members:
        assert line["task_type"] == "search"
        assert line["trace_id"] == f"{servers[1].context.trace_id:032x}"
    assert single["level"] == "WARNING" and single["logger"] == "unirank.server.pipeline"
    (outside,) = [line for line in lines if line["message"] == "outside any request"]
    assert "task_type" not in outside and "trace_id" not in outside


async def test_without_tracing_the_trace_id_is_the_callers(artifact_dir: Path) -> None:
    tracer = TracerProvider().get_tracer("test-caller")
    query = known_query(load_artifact(artifact_dir))
    with captured_json_lines() as lines:
        async with running_server("cpu-realtime", artifact_dir) as server:  # exporters "none"
            assert server.telemetry.tracer is None
            assert server.pipeline is not None
            server.pipeline.runtime.backend = _Failing()
            async with AsyncRecommenderClient(server.address) as client:
                with tracer.start_as_current_span("caller") as caller:
                    await client.search(query, request_id="req-log-2")
    (warning,) = [line for line in lines if line["message"].startswith("backend error")]
    assert warning["trace_id"] == f"{caller.get_span_context().trace_id:032x}"
    assert warning["request_id"] == "req-log-2" and warning["task_type"] == "search"


def test_text_format_appends_the_request_fields_only_inside_a_request() -> None:
    stream = io.StringIO()
    handler = make_handler("text", stream)
    record = logging.LogRecord("unirank.x", logging.INFO, __file__, 1, "plain", None, None)
    assert handler.filter(record)
    assert handler.format(record).endswith("unirank.x: plain")
