"""Section 3 of the stress report, SIGTERM under load: a real ``unirank serve`` drained mid-load,
every request classified (also run, shorter, by tests/hardening/test_faults.py)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from unirank_bench.loadgen import Load, Outcome
from unirank_bench.servers import ServerProcess, serving

from tests.conftest import PROFILES
from unirank.artifact import load_artifact
from unirank.server.config import load_profile
from unirank_stress.common import md_table


@dataclass(frozen=True)
class SigtermReport:
    requests: int
    in_flight_at_signal: int
    finished_after_signal: int
    """Requests sent before the signal that completed OK after it: drained, not cut."""
    refused_draining: int
    refused_overloaded: int
    """Refused at admission with RESOURCE_EXHAUSTED + RetryInfo: never started, retried elsewhere."""
    refused_closed: int
    failed: list[Outcome]
    exit_code: int
    drain_s: float


async def sigterm_under_load(
    served: ServerProcess, anchor_item_id: str, callers: int, warm_s: float
) -> SigtermReport:
    """Load the server, SIGTERM it mid-load, and classify every request.

    A request sent before the signal must succeed, or be refused as DRAINING (it reached the server
    after draining began: refused with RetryInfo, never started) or OVERLOADED (refused at admission
    with RetryInfo, never started). After the signal, a request may also find the port closed
    (UNAVAILABLE). Anything else is a failed request.
    """
    load = Load(served.address, anchor_item_id, callers)
    running = asyncio.create_task(load.run())
    await asyncio.sleep(warm_s)
    in_flight = load.in_flight
    signalled = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(running, 60)
    exit_code = await asyncio.to_thread(served.proc.wait, 60)
    drain_s = time.monotonic() - signalled
    failed = []
    for outcome in load.outcomes:
        before = outcome.started_s < signalled
        if outcome.code == "OK":
            continue
        draining = outcome.code == "UNAVAILABLE" and outcome.reason == "DRAINING"
        overloaded = outcome.code == "RESOURCE_EXHAUSTED" and outcome.reason == "OVERLOADED"
        closed = outcome.code == "UNAVAILABLE" and not outcome.reason and not before
        if not (draining or overloaded or closed):
            failed.append(outcome)
    return SigtermReport(
        requests=len(load.outcomes),
        in_flight_at_signal=in_flight,
        finished_after_signal=sum(
            o.code == "OK" and o.started_s < signalled < o.ended_s for o in load.outcomes
        ),
        refused_draining=sum(o.reason == "DRAINING" for o in load.outcomes),
        refused_overloaded=sum(o.reason == "OVERLOADED" for o in load.outcomes),
        refused_closed=sum(o.code == "UNAVAILABLE" and not o.reason for o in load.outcomes),
        failed=failed,
        exit_code=exit_code,
        drain_s=drain_s,
    )


async def sigterm(artifact: Path, quick: bool) -> list[str]:
    item = load_artifact(artifact).catalog.items.key(1)
    callers, warm_s = (16, 1.0) if quick else (64, 3.0)
    async with serving(PROFILES / "cpu-realtime.toml", artifact) as served:
        report = await sigterm_under_load(served, item, callers=callers, warm_s=warm_s)
    failed = Counter(f"{o.code} {o.reason}".strip() for o in report.failed)
    print(f"stress: SIGTERM {report}", flush=True)
    limits = load_profile(PROFILES / "cpu-realtime.toml").server
    return [
        "## 3. SIGTERM under load",
        "",
        f"A real `unirank serve` (cpu-realtime) under {callers} closed-loop callers for {warm_s:.0f} s, then "
        "SIGTERM. Each caller stops at its first UNAVAILABLE (a real client fails over then) and waits "
        f"as RetryInfo asks after a RESOURCE_EXHAUSTED (cpu-realtime admits {limits.max_concurrent_rpcs} "
        f"calls at a time and lets {limits.max_queued_rpcs} more wait at most "
        f"{limits.max_queue_wait_ms:g} ms; callers past that are refused by design).",
        "",
        *md_table(
            [
                "requests",
                "outstanding at the signal",
                "sent before, answered OK after",
                "refused DRAINING (RetryInfo)",
                "refused OVERLOADED before the signal (RetryInfo)",
                "port already closed",
                "**failed**",
                "exit code",
                "signal to exit",
            ],
            [
                [
                    f"{report.requests:,}",
                    report.in_flight_at_signal,
                    report.finished_after_signal,
                    report.refused_draining,
                    report.refused_overloaded,
                    report.refused_closed,
                    f"**{len(report.failed)}** {dict(failed) or ''}",
                    report.exit_code,
                    f"{report.drain_s:.2f} s",
                ]
            ],
        ),
        "Every request the server had admitted when the signal came finished with its ranking. "
        "Requests still waiting to be admitted when draining began (queued behind the others on the "
        "event loop) were refused with UNAVAILABLE, reason DRAINING and RetryInfo before any work was "
        "done, which a client retries on another replica; health said NOT_SERVING from the signal on. "
        "A failure is any other outcome (an admitted request cut off, CANCELLED, INTERNAL, ...).",
        "",
    ]
