"""``make stress``: the long hardening runs, written up as docs/reliability.md.

1. The fuzz test at full size (``--fuzz-examples`` per strategy: 2,500 gives 13,000 RPCs) and every
   input limit probed by name.
2. Overload: unloaded p99 and capacity of a real ``unirank serve``, then 4x that capacity offered
   open-loop, with the shipped limits and with limits sized from the measurement.
3. SIGTERM under load: a real ``unirank serve`` drained mid-load.
4. Every fault and attack the hardening tests drive, tried again and written down with what was
   observed.

    make stress [STRESS_ARGS=...]
    PYTHONPATH=bench .venv/bin/python -m unirank_stress [--artifact DIR] [--out docs/reliability.md] [--quick]

The load generator shares the machine's cores with the server; the report says how many and how
busy the machine was, so compare ratios within one report rather than numbers across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unirank.artifact import load_artifact
from unirank_stress.attacks import attacks
from unirank_stress.common import REPO, load_average, md_table
from unirank_stress.faults import faults
from unirank_stress.inputs import probe_limits, run_fuzz
from unirank_stress.overload import overload
from unirank_stress.sigterm import sigterm


def ensure_artifact(path: Path | None) -> Path:
    if path is not None:
        return path
    target = REPO / "build" / "stress-artifact"
    if not (target / "manifest.json").is_file():
        from unirank.training.pipeline import TrainConfig, train_artifact

        print(f"stress: training a tiny artifact into {target}", flush=True)
        train_artifact(TrainConfig.tiny(seed=0), target)
    return target


KEPT_HEADING = "## Hardening II"
"""Where the written-by-hand part of docs/reliability.md begins; a regenerated report keeps it."""


def _kept_after(out: Path) -> str:
    """The hand-written tail of an existing report (from :data:`KEPT_HEADING` on), to keep."""
    text = out.read_text() if out.is_file() else ""
    start = text.find(f"\n{KEPT_HEADING}")
    return "" if start < 0 else text[start:]


def render(sections: list[list[str]], header: dict[str, str]) -> str:
    lines = [
        "# Reliability",
        "",
        "What `make stress` (`bench/unirank_stress/`) tried against real UniRank servers, and what "
        "happened: bad input, overload, faults, and attacks on access control. Regenerate with "
        "`make stress` (a few minutes; `STRESS_ARGS=--quick` for a smoke run written under build/). "
        "The fast versions of the same checks run in `make test` (`tests/hardening/`).",
        "",
        *md_table(["", ""], [[k, v] for k, v in header.items()]),
    ]
    for section in sections:
        lines += section
    return "\n".join(lines).rstrip() + "\n"


async def run_all(artifact: Path, workdir: Path, quick: bool, only: str | None = None) -> list[list[str]]:
    runs: dict[str, Callable[[], Any]] = {
        "limits": lambda: probe_limits(artifact),
        "overload": lambda: overload(artifact, workdir, quick),
        "sigterm": lambda: sigterm(artifact, quick),
        "faults": lambda: faults(artifact, workdir),
        "attacks": lambda: attacks(artifact, workdir),
    }
    return [await run() for name, run in runs.items() if only in (None, name)]


SECTIONS = ("fuzz", "limits", "overload", "sigterm", "faults", "attacks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stress", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--artifact", type=Path, default=None, help="default: build/stress-artifact (trained once)"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: docs/reliability.md")
    parser.add_argument(
        "--fuzz-examples", type=int, default=2500, help="per fuzz strategy (2,500: 13,000 RPCs)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="seconds instead of minutes; writes under build/"
    )
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        default=None,
        help="run one section alone; writes build/reliability-SECTION.md unless --out says otherwise",
    )
    args = parser.parse_args(argv)
    artifact = ensure_artifact(args.artifact)
    out = args.out or (
        REPO / "build" / f"reliability-{args.only}.md"
        if args.only
        else REPO / "build" / "reliability-quick.md"
        if args.quick
        else REPO / "docs" / "reliability.md"
    )
    examples = 50 if args.quick else args.fuzz_examples
    load_before = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unirank-stress-") as tmp:
        workdir = Path(tmp)
        fuzz = run_fuzz(artifact, examples, workdir) if args.only in (None, "fuzz") else []
        sections = (
            [] if args.only == "fuzz" else asyncio.run(run_all(artifact, workdir, args.quick, args.only))
        )
    sections = [fuzz + sections[0], *sections[1:]] if sections else [fuzz]
    import grpc as grpc_module

    header = {
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.system()} {platform.release()}",
        "load average (1, 5, 15 min)": f"before {load_before}; after {load_average()}",
        "software": f"Python {platform.python_version()}, grpcio {grpc_module.__version__}",
        "artifact": f"`{load_artifact(artifact).model_version}` "
        + ("(the tiny synthetic one)" if args.artifact is None else f"({artifact.name})"),
        "run": f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - started:.0f} s"
        + (" (--quick: short runs, not the numbers to quote)" if args.quick else ""),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(sections, header) + _kept_after(out))
    print(f"stress: wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
