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
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from typing import Any

log = logging.getLogger(__name__)


class WorkerGroup:
    """Readiness flags shared by the workers of one supervisor."""

    def __init__(self, flags: Any, index: int) -> None:
        self._flags = flags
        self.index = index

    def set_ready(self, ready: bool) -> None:
        self._flags[self.index] = 1 if ready else 0

    def all_ready(self) -> bool:
        return all(self._flags[:])

    @property
    def size(self) -> int:
        return len(self._flags)


WorkerMain = Callable[[WorkerGroup], int]


def _worker_entry(main: WorkerMain, flags: Any, index: int) -> None:
    raise SystemExit(main(WorkerGroup(flags, index)))


def supervise(main: WorkerMain, workers: int, grace_s: float, restart_delay_s: float = 0.5) -> int:
    """Run ``main`` in ``workers`` processes until SIGTERM / SIGINT; restart any that dies."""
    context = multiprocessing.get_context("spawn")
    flags = context.Array("b", workers, lock=False)
    stopping = False

    def start(index: int) -> SpawnProcess:
        process = context.Process(
            target=_worker_entry, args=(main, flags, index), name=f"unirank-worker-{index}"
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
