"""Simulated users for online KPIs: a position-biased click model over the artifact's held-out data.

Each simulated request is a held-out (test split) example of the data the artifact was trained on,
regenerated from its manifest: a user, the use-case's context, and the items the user really
engaged with next (the truth). The request goes through the real client; the simulated user then
examines the answer top-down with a position-biased probability (``examine(k) = 1 / k**bias``) and
clicks an examined item with a high probability when it is one of the truth items, a low one
otherwise; a click may start a play (engagement seconds drawn per relevance) that may complete.
The feedback goes back with ``RecordEvents``, naming the answer's impression id, so the server
attributes it; the per-task KPIs are read back with ``GetServingStats``.

    python scripts/simulate_traffic.py run --target 127.0.0.1:50151 --artifact build/artifact
    python scripts/simulate_traffic.py demo   # `make kpi-demo`: trained vs random-scoring model
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unirank.artifact import TaskType, load_artifact
from unirank.client import Event, RecommendationRequest, RecommenderClient, UniRankError
from unirank.client.domain import Category, NewReleases, Notification, RelatedItems, Search, Task
from unirank.client.monitor import ServingStats, StatsClient

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ClickModel:
    """Position bias and per-relevance engagement of the simulated users."""

    bias: float = 1.0
    """examine(k) = 1 / k**bias for the 1-based position k."""
    click_relevant: float = 0.9
    click_other: float = 0.05
    play_relevant: float = 0.8
    play_other: float = 0.3
    complete_relevant: float = 0.6
    complete_other: float = 0.1
    seconds_relevant: float = 900.0
    """Mean seconds played of a truth item (exponential)."""
    seconds_other: float = 90.0


@dataclass(frozen=True)
class Visit:
    """One held-out example: the request and what the user really engaged with."""

    task: str
    request: RecommendationRequest
    truth: frozenset[str]


def _task_context(task: TaskType, context: Any) -> Task:
    if task is TaskType.RELATED_ITEMS:
        return RelatedItems(context.anchor_item_id)
    if task is TaskType.SEARCH:
        return Search(context.query)
    if task is TaskType.CATEGORY:
        return Category(context.category_id)
    if task is TaskType.NEW_RELEASES:
        return NewReleases()
    return Notification()


def held_out_visits(artifact_dir: Path, per_task: int, seed: int) -> list[Visit]:
    """Up to ``per_task`` test-split examples per use-case, regenerated from the artifact's manifest
    (training code: this script is a tool, not part of the client)."""
    from unirank.training.examples import TEST, UserSplit
    from unirank.training.labels import make_examples
    from unirank.training.sources import load_logs, parse_data_spec

    artifact = load_artifact(artifact_dir)
    recorded = artifact.manifest["training_data"]
    log = load_logs(parse_data_spec(recorded["data"]), size=recorded["size"], seed=int(recorded["seed"]))
    split = UserSplit.from_logs(log, tuple(recorded["split"]["fractions"]))
    examples = make_examples(log, artifact.encoder().max_history, split)
    item_ids = log.items.item_ids
    by_task: dict[str, list[int]] = {}
    for row in range(len(examples)):
        if examples.split[row] == TEST:
            by_task.setdefault(TaskType(int(examples.task[row])).name.lower(), []).append(row)
    rng = random.Random(seed)
    visits = []
    for task, rows in sorted(by_task.items()):
        for row in rng.sample(rows, min(per_task, len(rows))):
            context = examples.contexts[row]
            truth = frozenset(item_ids[int(i)] for i in examples.positives(row))
            request = RecommendationRequest(
                _task_context(context.task, context),
                user_id=context.user_id,
                history_item_ids=tuple(context.history_item_ids),
                event_time_unix_ms=int(examples.timestamp_ms[row]),
                request_id=f"sim-{task}-{row}",
            )
            visits.append(Visit(task, request, truth))
    rng.shuffle(visits)
    return visits


def user_feedback(
    visit: Visit, item_ids: list[str], impression_id: str, model: ClickModel, rng: random.Random
) -> Iterator[Event]:
    """The events one simulated user sends about one answer."""
    user = visit.request.user_id
    for position, item in enumerate(item_ids, start=1):
        if rng.random() >= 1.0 / position**model.bias:
            continue  # not examined
        relevant = item in visit.truth
        if rng.random() >= (model.click_relevant if relevant else model.click_other):
            continue
        yield Event(user, item, "click", impression_id=impression_id, position=position)
        if rng.random() >= (model.play_relevant if relevant else model.play_other):
            continue
        mean = model.seconds_relevant if relevant else model.seconds_other
        seconds = round(rng.expovariate(1.0 / mean), 1)
        yield Event(
            user,
            item,
            "play_start",
            impression_id=impression_id,
            position=position,
            engagement_seconds=seconds,
        )
        if rng.random() < (model.complete_relevant if relevant else model.complete_other):
            yield Event(user, item, "play_complete", impression_id=impression_id, position=position)


def simulate(target: str, visits: list[Visit], model: ClickModel, seed: int) -> dict[str, int]:
    """Send every visit and its feedback; returns how the server counted the events."""
    rng = random.Random(seed)
    counted = {"requests": 0, "errors": 0, "attributed": 0, "unattributed": 0}
    with RecommenderClient(target, timeout=10.0) as client:
        for visit in visits:
            try:
                answer = client.recommend(visit.request)
            except UniRankError:
                counted["errors"] += 1  # e.g. a use-case this profile does not serve
                continue
            counted["requests"] += 1
            events = list(user_feedback(visit, answer.item_ids, answer.impression_id, model, rng))
            if events:
                recorded = client.record_events(events)
                counted["attributed"] += recorded.attributed
                counted["unattributed"] += recorded.unattributed
    return counted


def kpi_table(stats: ServingStats) -> dict[str, dict[str, float]]:
    """Per task: impressions, CTR, play rate and mean engagement seconds per impression."""
    table = {}
    for task, counters in sorted(stats.tasks.items()):
        if counters.impressions:
            n = counters.impressions
            table[task] = {
                "impressions": n,
                "ctr": counters.clicks / n,
                "play_rate": counters.plays / n,
                "engagement_s": counters.engagement_seconds / n,
            }
    return table


def format_table(columns: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per task; a CTR / play rate / engagement column group per model."""
    names = list(columns)
    tasks = sorted({task for table in columns.values() for task in table})
    header = ["task"] + [
        f"{name} {metric}" for name in names for metric in ("imp", "CTR", "play", "engage s")
    ]
    rows = [header]
    for task in tasks:
        row = [task]
        for name in names:
            kpi = columns[name].get(task)
            if kpi is None:
                row += ["-"] * 4
            else:
                row += [
                    f"{kpi['impressions']:.0f}",
                    f"{100 * kpi['ctr']:.1f}%",
                    f"{100 * kpi['play_rate']:.1f}%",
                    f"{kpi['engagement_s']:.1f}",
                ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


def read_kpis(target: str) -> dict[str, dict[str, float]]:
    with StatsClient(target) as stats:
        return kpi_table(stats.fetch())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(artifact: Path, profile: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A `unirank serve` subprocess on a free port, once it reports SERVING."""
    port = _free_port()
    unirank = Path(sys.executable).with_name("unirank")
    process = subprocess.Popen(
        [str(unirank), "serve", "--profile", str(profile), "--artifact", str(artifact), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"unirank serve {artifact} exited with {process.returncode}")
        try:
            with RecommenderClient(target, timeout=1.0) as client:
                if client.health() == "SERVING":
                    return process, target
        except UniRankError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"unirank serve {artifact} did not become SERVING")


def random_scoring_artifact(trained: Path, out: Path) -> Path:
    """The trained artifact's data and catalogue with an untrained network (one step, no head
    calibration): a model whose scores are as good as random, same retrieval and rules."""
    if (out / "manifest.json").exists():
        return out
    from unirank.training.config import TrainConfig
    from unirank.training.pipeline import train_artifact

    config = load_artifact(trained).manifest["training"]["config"]
    known = set(TrainConfig.__dataclass_fields__)
    settings = {k: v for k, v in config.items() if k in known and k not in {"max_steps", "split_fractions"}}
    settings |= {"max_steps": 1, "epochs": 1, "calibrate_heads": False, "learning_rate": 1e-9}
    return train_artifact(TrainConfig(**settings), out, progress=None)


def run_one(
    artifact: Path, profile: Path, visits: list[Visit], model: ClickModel, seed: int
) -> dict[str, Any]:
    process, target = serve(artifact, profile)
    try:
        counted = simulate(target, visits, model, seed)
        return {"counted": counted, "kpis": read_kpis(target)}
    finally:
        process.terminate()
        process.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="simulate users against a running server and print its KPIs")
    run.add_argument("--target", required=True)
    demo = commands.add_parser("demo", help="the same users against a trained and a random-scoring model")
    demo.add_argument("--profile", type=Path, default=ROOT / "profiles" / "cpu-realtime.toml")
    demo.add_argument("--random-artifact", type=Path, default=ROOT / "build" / "kpi-random")
    for sub in (run, demo):
        sub.add_argument("--artifact", type=Path, default=ROOT / "build" / "artifact")
        sub.add_argument("--per-task", type=int, default=400, help="held-out visits per use-case")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--bias", type=float, default=1.0, help="position bias: examine(k) = 1/k**bias")
        sub.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    model = ClickModel(bias=args.bias)
    visits = held_out_visits(args.artifact, args.per_task, args.seed)
    if args.command == "run":
        results: dict[str, Any] = {
            "server": {
                "counted": simulate(args.target, visits, model, args.seed),
                "kpis": read_kpis(args.target),
            }
        }
    else:
        baseline = random_scoring_artifact(args.artifact, args.random_artifact)
        results = {
            "trained": run_one(args.artifact, args.profile, visits, model, args.seed),
            "random": run_one(baseline, args.profile, visits, model, args.seed),
        }
    print(f"{len(visits)} held-out visits, click model {model}")
    for name, result in results.items():
        print(f"{name}: {result['counted']}")
    print(format_table({name: result["kpis"] for name, result in results.items()}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if args.command == "demo":
        worse = [
            task
            for task, kpi in results["trained"]["kpis"].items()
            if task in results["random"]["kpis"]
            and not all(
                kpi[m] > results["random"]["kpis"][task][m] for m in ("ctr", "play_rate", "engagement_s")
            )
        ]
        if worse:
            print(f"the trained model is not ahead on every KPI of: {', '.join(worse)}")
            return 1
        print("the trained model is ahead on CTR, play rate and engagement on every task")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
