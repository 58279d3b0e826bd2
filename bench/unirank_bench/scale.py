"""``make bench-scale``: how serving holds up as the catalogue grows (issue #18).

For each catalogue size it trains a synthetic artifact (``unirank train --items N``, a few hundred
steps: enough for item embeddings, not a tuned model), then serves it under cpu-realtime with
retrieval on (no caller candidates; ``embedding`` sources approximate, caches off, timeouts
relaxed so what is timed is the pipeline, not a fallback) and measures, per use-case, p50/p99 at
C = 1 and throughput at C = 32; the server's start-up (exec to health SERVING) and RSS; the
artifact's size; and recall@200 of the approximate item index against exact search. Results go
to ``docs/benchmarks/scale.json``, plots beside it and a block of ``docs/benchmarks.md``.

    make bench-scale                                   # 3k, 30k, 300k and 1M items
    make bench-scale SCALE_ARGS="--sizes 3000,30000"   # the quick run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unirank.artifact import load_artifact
from unirank.artifact.ann import ItemIndex
from unirank.server.config import load_profile
from unirank.server.profile_io import derive_profile, write_profile
from unirank_bench import procstats
from unirank_bench.scale_repack import needs_repack, repack
from unirank_bench.scale_report import write_report
from unirank_bench.servers import REPO, bench_env, wait_serving
from unirank_bench.workload import USE_CASES, build_workloads, to_unirank

METHOD = "/unirank.v1.RecommenderService/Recommend"
RECALL_K = 200
EF_SEARCH = (128, 256, 512, 1024)
"""Search lists whose recall@200 is measured; the served profile uses its ``ann_ef_search``."""
APPROXIMATE = ("notification", "related_items")
"""The use-cases whose retrieval has an ``embedding`` source in cpu-realtime."""


def artifact_dir(root: Path, items: int) -> Path:
    return root / f"items-{items}"


def batch_size(items: int) -> int:
    """Rows per training step: the training forward scatters co-engagement over a [batch, items]
    row per step, so at 512 rows a million items is 2 GB per tensor and a minute per step; the
    batch shrinks as the catalogue grows to keep batch x items near 30,000 x 512."""
    return max(32, min(512, 512 * 30_000 // items))


def training_steps(items: int, steps: int) -> int:
    """``steps`` up to 30,000 items; beyond, fewer (at least 60): every step also computes the whole
    item table, so a step at a million items costs ~30 times one at 30,000. The item vectors are
    built from titles and categories as well as per-item embeddings, so they have the structure
    retrieval searches even where a short run leaves the per-item part near its initialisation."""
    return steps if items <= 30_000 else max(60, steps * 30_000 // items)


def evaluation_rows(items: int) -> int:
    """Validation and test rows per use-case: each is ranked against the whole catalogue (with the
    baselines), minutes per hundred rows at 300,000 items; the scale artifacts need no metrics (nor,
    beyond 30,000 items, calibrated heads: ``calibrate_heads=false``, which scores the validation
    rows again per head and feature and took most of half an hour at a million items)."""
    return 200 if items <= 30_000 else 20


def train(items: int, out: Path, steps: int, log: Path) -> float:
    """``unirank train --items`` into ``out`` unless an artifact of that size is there (rewritten in
    the current format if it is of an older one: :mod:`unirank_bench.scale_repack`); the seconds
    training took."""
    manifest = out / "manifest.json"
    if manifest.is_file():
        written = json.loads(manifest.read_text())
        if written["training_data"].get("synthetic_items") == items:
            if needs_repack(out):
                print(f"  rewriting {out} in the current artifact format ...", flush=True)
                print(f"  rewritten in {repack(out):.0f} s", flush=True)
            return float(written["training"]["seconds"])
    started = time.monotonic()
    command = [
        str(Path(sys.executable).with_name("unirank")), "train", "--items", str(items),
        "--max-steps", str(training_steps(items, steps)), "--out", str(out),
        "--set", f"batch_size={batch_size(items)}",
        "--set", f"eval_rows_per_task={evaluation_rows(items)}",
        "--set", f"validation_rows_per_task={evaluation_rows(items)}",
        *(() if items <= 30_000 else ("--set", "calibrate_heads=false")),
    ]  # fmt: skip
    with log.open("w") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT, env=bench_env())
    return time.monotonic() - started


def artifact_mb(path: Path) -> float:
    files = json.loads((path / "manifest.json").read_text())["files"]
    return sum((path / name).stat().st_size for name in [*files, "manifest.json"]) / 2**20


def recall(path: Path, queries: int, seed: int) -> tuple[dict[str, Any], float | None]:
    """recall@200 of the shipped HNSW index against exact inner-product search, per search list,
    on queries like the server's (one item's vector, or the mean of two to five)."""
    artifact = load_artifact(path)
    embeddings = artifact.retrieval.item_embeddings
    index = ItemIndex.load(path / "item_index.faiss")
    rng = np.random.default_rng(seed)
    n = len(embeddings) - 1
    rows = []
    for q in range(queries):
        items = rng.integers(1, n + 1, size=1 if q % 2 == 0 else int(rng.integers(2, 6)))
        vector = embeddings[items].mean(0)
        rows.append(vector / max(float(np.linalg.norm(vector)), 1e-12))
    query = np.asarray(rows, dtype=np.float32)
    exact = np.argpartition(-(query @ embeddings[1:].T), RECALL_K - 1, axis=1)[:, :RECALL_K] + 1
    out: dict[str, Any] = {}
    for ef in EF_SEARCH:
        found, spent = [], 0.0
        for vector in query:
            started = time.perf_counter()
            found.append(index.search(vector, RECALL_K, ef))
            spent += time.perf_counter() - started
        hits = [len(set(f.tolist()) & set(e.tolist())) / RECALL_K for f, e in zip(found, exact, strict=True)]
        out[str(ef)] = {"recall_at_200": float(np.mean(hits)), "search_us": spent / queries * 1e6}
    return out, related_recall(artifact.retrieval.related_items, embeddings, artifact.catalog.popularity, rng)


def related_recall(related: np.ndarray, embeddings: np.ndarray, popularity: Any, rng: Any) -> float | None:
    """Share of the exact nearest items in the shipped related-items lists, over items nobody played
    in training (so no co-engaged item comes first: the list is all embedding neighbours). Exact
    up to 50,000 items by construction; the HNSW index's beyond (training's related_items)."""
    unplayed = np.flatnonzero(np.asarray(popularity, dtype=np.float64) == 0)
    unplayed = unplayed[unplayed > 0]
    if not len(unplayed):
        return None
    items = rng.choice(unplayed, size=min(200, len(unplayed)), replace=False)
    k = related.shape[1]
    sims = embeddings[items] @ embeddings.T
    sims[:, 0] = -np.inf
    sims[np.arange(len(items)), items] = -np.inf
    exact = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return float(
        np.mean(
            [len(set(related[i].tolist()) & set(e.tolist())) / k for i, e in zip(items, exact, strict=True)]
        )
    )


def scale_profile(work: Path, ef_search: int) -> Path:
    """cpu-realtime with approximate embedding search, no caches and timeouts no run here meets."""
    base = load_profile(REPO / "profiles" / "cpu-realtime.toml")
    tasks: dict[str, Any] = {
        name: {"timeout_ms": 10_000.0, "cache": {"enabled": False}} for name in base.tasks
    }
    for name in APPROXIMATE:
        tasks[name]["retrieval"] = {"embedding_search": "approximate", "ann_ef_search": ef_search}
    profile = derive_profile(
        base,
        {
            "tasks": tasks,
            "server": {"max_queued_rpcs": 10_000, "max_queue_wait_ms": 0, "grace_period_s": 0.5},
        },
        "cpu-realtime-scale",
    )
    return write_profile(profile, work / "cpu-realtime-scale.toml")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``unirank serve`` of one artifact: start-up timed from exec to health SERVING."""

    def __init__(self, profile: Path, artifact: Path, log: Path, extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        command = [str(Path(sys.executable).with_name("unirank")), "serve", "--profile", str(profile),
                   "--artifact", str(artifact), "--port", str(self.port), *extra]  # fmt: skip
        started = time.monotonic()
        self._log = log.open("w")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=bench_env())
        if not wait_serving(self.address, 300, self.proc):
            self.stop()
            raise RuntimeError(f"the server of {artifact} never reported SERVING; see {log}")
        self.startup_s = time.monotonic() - started
        self._log_path = log

    def wait_for_drift_reference(self, timeout_s: float = 120.0) -> float | None:
        """Seconds until the server logs its drift reference measured (it scores those requests
        after SERVING, 5 CPU seconds at a million items, which would otherwise share the first
        load's cores); None if it did not within ``timeout_s``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if "drift reference of" in self._log_path.read_text(errors="replace"):
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    def memory(self) -> dict[str, float]:
        """VmRSS, VmHWM and RSS split into anonymous memory and mapped file pages (MB): the
        graph's external data and the index are file pages the kernel can drop and share."""
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) / 1024
        return values

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


async def closed_loop(
    address: str,
    payloads: list[bytes],
    callers: int,
    seconds: float,
    warmup_s: float = 1.0,
    method: str = METHOD,
) -> dict[str, Any]:
    """``callers`` callers each sending its next request when the last is answered, for
    ``seconds`` after ``warmup_s`` of warm-up; latencies and answers of the measured window.
    Answers of :data:`METHOD` are read for the fallback flag; other methods' are not parsed."""
    import grpc

    from unirank.v1 import recommender_pb2

    latencies: list[float] = []
    failures, fallbacks = 0, 0
    begin = time.monotonic() + warmup_s
    end = begin + seconds
    cursor = [0]
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(method)

        async def caller() -> None:
            nonlocal failures, fallbacks
            while (sent := time.monotonic()) < end:
                payload = payloads[cursor[0] % len(payloads)]
                cursor[0] += 1
                try:
                    answer = await call(payload, timeout=30)
                except grpc.aio.AioRpcError:
                    failures += begin <= time.monotonic() <= end
                    continue
                done = time.monotonic()
                if begin <= done <= end:  # answers completed inside the window count
                    latencies.append(done - sent)
                    if method == METHOD:
                        fallbacks += recommender_pb2.RecommendResponse.FromString(answer).fallback

        await asyncio.gather(*(caller() for _ in range(callers)))
    ms = np.asarray(latencies) * 1e3
    return {
        "requests_per_s": len(ms) / seconds,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "answers": len(ms),
        "failures": failures,
        "fallbacks": fallbacks,
    }


def measure(items: int, path: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Everything of one size, its server started and stopped here."""
    row: dict[str, Any] = {"items": items, "artifact_mb": artifact_mb(path)}
    row["recall"], row["related_recall_at_50"] = recall(path, args.queries, args.seed)
    artifact = load_artifact(path)
    workloads = build_workloads(artifact, args.requests, args.seed, caller_candidates=False)
    del artifact
    profile = scale_profile(work, args.ef_search)
    startups = []
    for attempt in range(args.startups):
        server = Server(profile, path, work / f"serve-{items}-{attempt}.log")
        startups.append(server.startup_s)
        if attempt + 1 < args.startups:
            server.stop()
    row["startup_s"] = startups
    row["drift_reference_after_serving_s"] = server.wait_for_drift_reference()
    row["rss_idle_mb"] = server.memory()["VmRSS"]
    loadavg_before = procstats.loadavg()
    try:
        row["use_cases"] = {}
        for task in args.use_cases:
            payloads = [to_unirank(request, i) for i, request in enumerate(workloads[task])]
            one = asyncio.run(closed_loop(server.address, payloads, 1, args.seconds, args.warmup))
            many = asyncio.run(closed_loop(server.address, payloads, 32, args.seconds, args.warmup))
            row["use_cases"][task] = {"c1": one, "c32": many}
            print(f"  {items} {task}: C=1 p50 {one['p50_ms']:.2f} ms p99 {one['p99_ms']:.2f} ms, "
                  f"C=32 {many['requests_per_s']:.0f} requests/s", flush=True)  # fmt: skip
        memory = server.memory()
        row["rss_mb"], row["peak_rss_mb"] = memory["VmRSS"], memory["VmHWM"]
        row["rss_anon_mb"], row["rss_file_mb"] = memory["RssAnon"], memory["RssFile"]
    finally:
        server.stop()
    row["loadavg"] = {"before": loadavg_before, "after": procstats.loadavg()}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="3000,30000,300000,1000000", help="catalogue sizes, comma-separated"
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps per artifact (default 300)")
    parser.add_argument("--artifacts", type=Path, default=REPO / "build" / "scale", help="where artifacts go")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks", help="JSON and plots")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md", help="page to update")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per load (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per load (default 1)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per use-case (default 1000)")
    parser.add_argument("--queries", type=int, default=300, help="recall queries (default 300)")
    parser.add_argument("--startups", type=int, default=2, help="start-ups timed per size (default 2)")
    parser.add_argument("--ef-search", type=int, default=512, help="the served profile's ann_ef_search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--use-cases", type=lambda text: text.split(","), default=list(USE_CASES), help="comma-separated"
    )
    parser.add_argument("--train-only", action="store_true", help="build the artifacts, measure nothing")
    parser.add_argument("--merge", action="store_true", help="keep other sizes' rows of scale.json")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    args.artifacts.mkdir(parents=True, exist_ok=True)
    work = args.artifacts / "runs"
    work.mkdir(exist_ok=True)
    trained = {}
    for items in sizes:
        print(f"artifact of {items} items ...", flush=True)
        trained[items] = train(
            items, artifact_dir(args.artifacts, items), args.steps, work / f"train-{items}.log"
        )
    if args.train_only:
        return 0
    rows = []
    for items in sizes:
        print(f"measuring {items} items (load {procstats.loadavg()[0]:.1f})", flush=True)
        row = measure(items, artifact_dir(args.artifacts, items), work, args)
        row["train_s"] = trained[items]
        rows.append(row)
    previous = args.out / "scale.json"
    if args.merge and previous.is_file():  # keep the sizes measured in earlier runs
        measured = {row["items"] for row in rows}
        kept = [row for row in json.loads(previous.read_text())["sizes"] if row["items"] not in measured]
        rows = sorted([*kept, *rows], key=lambda row: int(row["items"]))
    result = {
        "sizes": rows,
        "cores": os.cpu_count(),
        "ef_search": args.ef_search,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "command": "PYTHONPATH=bench .venv/bin/python -m unirank_bench.scale "
        + " ".join(argv or sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(result, args.out, args.doc)
    print(f"wrote {args.out / 'scale.json'} and the scale block of {args.doc}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
