"""Start-up of ``unirank serve`` in CPU seconds as well as wall seconds (issue #18).

On a shared machine the wall-clock start-up of a large artifact measures the other processes (and
a cold page cache) as much as the server; the CPU the server process spends from exec to health
SERVING (user + system, every thread, from ``/proc/PID/stat``) does not. It bounds the start-up on
an idle machine with the artifact's files in the page cache.

    PYTHONPATH=bench .venv/bin/python -m unirank_bench.startup_cpu --sizes 3000,1000000 --starts 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unirank_bench.procstats import cpu_seconds, loadavg
from unirank_bench.scale import Server
from unirank_bench.servers import REPO


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3000,1000000", help="catalogue sizes of build/scale artifacts")
    parser.add_argument(
        "--starts", type=int, default=2, help="starts per size (a first may read a cold disk)"
    )
    parser.add_argument("--artifacts", type=Path, default=REPO / "build" / "scale")
    args = parser.parse_args(argv)
    profile = args.artifacts / "runs" / "cpu-realtime-scale.toml"
    if not profile.exists():
        parser.error(f"{profile} is missing: run make bench-scale first (it writes the profile)")
    for size in (int(s) for s in args.sizes.split(",")):
        artifact = args.artifacts / f"items-{size}"
        for start in range(args.starts):
            load = loadavg()[0]
            server = Server(profile, artifact, args.artifacts / "runs" / f"startup-{size}-{start}.log")
            try:
                cpu = cpu_seconds(server.proc.pid)
            finally:
                server.stop()
            wall = server.startup_s
            print(f"{size:>9,} items: start-up {wall:6.2f} s wall, {cpu:5.2f} s CPU, load {load:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
