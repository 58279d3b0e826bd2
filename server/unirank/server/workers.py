"""``unirank serve --workers N``: N server processes sharing one port through SO_REUSEPORT.

The kernel spreads connections over the workers. A supervisor restarts a worker that dies and
forwards SIGTERM (each worker drains on its own) and SIGHUP (each rotates its secrets and looks
for a new model). Health reflects every worker: a shared array holds each worker's readiness and
every worker reports SERVING only while all of them are ready, so a load balancer probing any one
of them sees the group's state.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.sharedctypes
import os
import signal
import tempfile
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from typing import Any

from unirank.server.telemetry.workers import MetricsAggregator, StatsExchange

log = logging.getLogger(__name__)


class WorkerGroup:
    """What the workers of one supervisor share: readiness flags, each worker's Prometheus
    exporter port, and a directory where each leaves a snapshot of its serving counters."""

    def __init__(self, flags: Any, index: int, metrics_ports: Any = None, state_dir: str = "") -> None:
        self._flags = flags
        self.index = index
        self._metrics_ports = metrics_ports
        self.state_dir = state_dir

    def set_metrics_port(self, port: int) -> None:
        """This worker's own exporter port, for the supervisor's aggregated endpoint to scrape."""
        if self._metrics_ports is not None:
            self._metrics_ports[self.index] = port

    def stats_exchange(self) -> StatsExchange | None:
        return StatsExchange(self.state_dir, self.index) if self.state_dir else None

    def set_ready(self, ready: bool) -> None:
        self._flags[self.index] = 1 if ready else 0

    def all_ready(self) -> bool:
        return all(self._flags[:])

    @property
    def size(self) -> int:
        return len(self._flags)


WorkerMain = Callable[[WorkerGroup], int]


def _worker_entry(main: WorkerMain, flags: Any, index: int, metrics_ports: Any, state_dir: str) -> None:
    raise SystemExit(main(WorkerGroup(flags, index, metrics_ports, state_dir)))


def supervise(
    main: WorkerMain,
    workers: int,
    grace_s: float,
    restart_delay_s: float = 0.5,
    metrics: tuple[str, int] | None = None,
) -> int:
    """Run ``main`` in ``workers`` processes until SIGTERM / SIGINT; restart any that dies.

    ``metrics`` (host, port): the supervisor serves the group's one Prometheus endpoint there,
    merging every worker's exporter (each worker binds a port of its own and says which).
    """
    context = multiprocessing.get_context("spawn")
    flags = context.Array("b", workers, lock=False)
    metrics_ports = context.Array("i", workers, lock=False)
    state = tempfile.TemporaryDirectory(prefix="unirank-workers-")
    aggregator = None
    if metrics is not None:
        aggregator = MetricsAggregator(metrics[0], metrics[1], lambda: list(metrics_ports[:]))
        print(
            f"unirank: metrics of all {workers} workers on http://{metrics[0]}:{aggregator.port}/metrics",
            flush=True,
        )
    stopping = False

    def start(index: int) -> SpawnProcess:
        metrics_ports[index] = 0
        process = context.Process(
            target=_worker_entry,
            args=(main, flags, index, metrics_ports, state.name),
            name=f"unirank-worker-{index}",
        )
        process.start()
        return process

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def forward(signum: int, frame: object) -> None:
        for process in processes:  # SIGHUP: each worker rotates secrets and looks for a new model
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    processes = [start(i) for i in range(workers)]
    signal.signal(signal.SIGHUP, forward)
    log.info("supervising %d workers: %s", workers, [p.pid for p in processes])
    while not stopping:
        time.sleep(0.1)
        for index, process in enumerate(processes):
            if not process.is_alive() and not stopping:
                flags[index] = 0
                log.error(
                    "worker %d (pid %s) exited with %s; restarting", index, process.pid, process.exitcode
                )
                time.sleep(restart_delay_s)
                processes[index] = start(index)
    for process in processes:
        if process.is_alive() and process.pid is not None:
            process.terminate()  # SIGTERM: each worker drains within the grace period
    deadline = time.monotonic() + grace_s + 10.0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
    if aggregator is not None:
        aggregator.close()
    state.cleanup()
    codes = [p.exitcode or 0 for p in processes]
    return max(codes, default=0)


async def watch_group_health(
    group: WorkerGroup, set_serving: Callable[[bool], Any], interval_s: float = 0.2
) -> None:
    """Keep this worker's health in step with the whole group's readiness."""
    serving: bool | None = None
    while True:
        ready = group.all_ready()
        if ready != serving:
            await set_serving(ready)
            serving = ready
        await asyncio.sleep(interval_s)
