"""Profile a UniRank server under load with py-spy: flame graph, collapsed stacks, top functions.

    PYTHONPATH=bench .venv/bin/python -m unirank_bench.profile --artifact build/bench-artifact \\
        [--profile cpu-realtime] [--workload mixed] [--concurrency 32] [--seconds 15] [--gil]

Needs ``py-spy`` on PATH or in the venv (``pip install py-spy``; it is not a project dependency).
Writes build/profile/<profile>-<workload>-c<C>{-gil}.{svg,txt} and prints the functions with
the most samples, inclusive (on the stack) and exclusive (at the top of the stack).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from unirank_bench import v2
from unirank_bench.loadworkers import Job, LoadGenerator
from unirank_bench.servers import PROFILES, REPO, UNIRANK_METHOD, start_unirank
from unirank_bench.workload import build_payloads, build_workloads


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def _frame(frame: str) -> str:
    """``fn (file.py:123)`` -> ``fn (file.py)``: one entry per function, not per line."""
    name, sep, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if sep else frame


def summarise(collapsed: Path, top: int = 40) -> str:
    """Inclusive and exclusive sample shares per function from py-spy's raw (collapsed) output."""
    inclusive: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] += count
        exclusive[frames[-1]] += count
    lines = [f"{total} samples", "", "inclusive (share of samples with the function on the stack):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "exclusive (share of samples with the function on top):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in exclusive.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m unirank_bench.profile")
    parser.add_argument("--artifact", type=Path, default=REPO / "build" / "bench-artifact")
    parser.add_argument("--profile", default="cpu-realtime")
    parser.add_argument("--workload", default="mixed")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL (the loop's view)")
    parser.add_argument("--native", action="store_true", help="include C/Cython frames (grpc, numpy)")
    parser.add_argument("--retrieval", action="store_true", help="no caller candidates: retrieval picks")
    parser.add_argument("--out-dir", type=Path, default=REPO / "build" / "profile")
    args = parser.parse_args(argv)

    from unirank.artifact import load_artifact

    work = args.out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    artifact = load_artifact(args.artifact)
    workloads = build_workloads(artifact, 2000, seed=0, caller_candidates=not args.retrieval)
    payload_file = work / "payloads.pickle"
    build_payloads(artifact, workloads, v2.load(work / "gen")).save(payload_file)
    server = start_unirank(PROFILES / f"{args.profile}.toml", args.artifact, work / "server.log")
    loadgen = LoadGenerator(1)
    stem = f"{args.profile}-{args.workload}-c{args.concurrency}" + ("-retrieval" if args.retrieval else "")
    stem += ("-gil" if args.gil else "") + ("-native" if args.native else "")
    try:
        start = time.monotonic() + 0.2
        job = Job(
            address=server.address,
            method=UNIRANK_METHOD,
            parser="unirank",
            payload_file=str(payload_file),
            payload_kind="unirank",
            workload=args.workload,
            mode="closed",
            concurrency=args.concurrency,
            start_at=start,
            measure_from=start + 1.0,
            measure_to=start + 2.0 + args.seconds,
            nonce="profile",
        )
        loadgen.start(job)
        time.sleep(1.2)
        spy = [_py_spy(), "record", "--pid", str(server.pid), "--duration", str(int(args.seconds))]
        spy += ["--rate", str(args.rate)] + (["--gil"] if args.gil else [])
        # --native unwinds C frames, which needs the process paused; otherwise sample without pausing.
        spy += ["--native"] if args.native else ["--nonblocking"]
        raw = args.out_dir / f"{stem}.txt"
        done = subprocess.run([*spy, "--format", "raw", "--output", str(raw)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"py-spy failed: {done.stderr[-2000:]}")
        result = loadgen.collect()
        print(f"load: {result.completed / (args.seconds + 1):.0f} requests/s during the profile")
        summary = summarise(raw)
        (args.out_dir / f"{stem}-summary.txt").write_text(summary)
        print(summary)
        print(f"collapsed stacks: {raw} (flame graph: py-spy record --format flamegraph, or speedscope)")
    finally:
        loadgen.close()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
