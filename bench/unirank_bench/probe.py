"""``unirank serve`` with a read-only side channel for the benchmark.

Runs exactly the serve command line (``unirank.server.cli.main``) and, on a daemon thread,
answers ``stats`` lines on stdin with one ``BENCH-PROBE {json}`` line on stdout: whether torch
is imported, and the scoring backend's batch counters (found once by walking the heap, then
held; nothing in the server is patched or wrapped).

    python -m unirank_bench.probe --profile P --artifact A --port 0
"""

from __future__ import annotations

import gc
import json
import sys
import threading
from typing import Any

PREFIX = "BENCH-PROBE "


class _Backends:
    """The live scoring backends, looked up by class name so the probe itself imports nothing."""

    def __init__(self) -> None:
        self._found: list[Any] = []

    def stats(self) -> dict[str, Any]:
        if not self._found:
            self._found = [
                o
                for o in gc.get_objects()
                if type(o).__name__ in ("TorchBackend", "OnnxBackend") and hasattr(o, "name")
            ]
        batches = requests = 0
        kinds = []
        for backend in self._found:
            kinds.append(type(backend).__name__)
            stats = getattr(backend, "batch_stats", None)
            if callable(stats):
                counters = stats()
                batches += counters.batches
                requests += counters.requests
        return {"backends": kinds, "batches": batches, "batched_requests": requests}


def _answer(backends: _Backends) -> None:
    for line in sys.stdin:
        if line.strip() != "stats":
            continue
        payload = {
            "torch_imported": "torch" in sys.modules,
            "onnxruntime_imported": "onnxruntime" in sys.modules,
            "threads": threading.active_count(),
            "unirank_server_from": list(getattr(sys.modules.get("unirank.server"), "__path__", [])),
            **backends.stats(),
        }
        sys.stdout.write(PREFIX + json.dumps(payload) + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    from unirank.server import cli

    threading.Thread(target=_answer, args=(_Backends(),), name="bench-probe", daemon=True).start()
    return cli.main(["serve", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
