"""`make rollout-demo`: canary rollouts of new versions, judged per use-case, against a live server.

A `unirank serve` process serves an artifact repository (the trained artifact as v001) under
cpu-realtime with the offline gate and canary rollouts on. The traffic simulator (held-out visits,
position-biased clicks, feedback through RecordEvents; scripts/simulate_traffic.py) drives all
five use-cases from four threads throughout, and counts failed requests. Then:

1. v002, a degraded version (the same data with an untrained network, build/kpi-random), is
   offered with ``unirank rollout start``: the offline gate refuses it and serving never changes.
2. v003, the trained model republished, passes the gate and becomes the canary; the simulated users
   are less satisfied with its *search* answers (their click probabilities on the canary's search
   answers are scaled by ``--search-penalty``: the online regression is injected in the click model,
   the model is unchanged), so search is rolled back alone while the other use-cases reach 100 %.
3. v004, the same model again (an A/A rollout), promotes every use-case.

Prints each rollout's per-task decision table; exits 1 if a step of the story did not happen or a
request failed. Writes build/rollout-demo/ (repository, profile, state, retrain request, JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulate_traffic import (
    ClickModel,
    Visit,
    held_out_visits,
    random_scoring_artifact,
    serve,
    user_feedback,
)

from unirank.artifact.store import REPOSITORY_MARKER
from unirank.client import RecommenderClient, UniRankError
from unirank.client.rollout import RolloutClient, RolloutStatus, format_rollout
from unirank.server.config import load_profile
from unirank.server.profile_io import derive_profile, write_profile

ROOT = Path(__file__).resolve().parents[1]
ROLLOUT = {
    "enabled": True,
    "steps": [10, 50, 100],
    "step_impressions": 100,
    "min_impressions": 100,
    "min_clicks": 20,
    "promote_impressions": 600,
    "look_impressions": 50,
    "judge_interval_s": 0.5,
    # Four client threads and the server share 2 cores: a p99 from a few hundred canary answers
    # moves by tens of ms with the machine's load, which is not the canary's doing.
    "guards": {"max_p99_ratio": 3.0, "p99_slack_ms": 100.0},
}
"""Knobs sized for a demo of minutes on 2 cores (production defaults: docs/rollouts.md)."""


class Traffic:
    """Simulated users on every use-case from several threads until stopped."""

    def __init__(
        self, target: str, visits: list[Visit], model: ClickModel, penalty: dict[str, float]
    ) -> None:
        self.target, self.visits, self.model = target, visits, model
        self.penalty = penalty
        """Use-case -> factor on click probabilities for answers from the canary arm."""
        self.requests = self.failures = 0
        self.arms: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, threads: int) -> None:
        for index in range(threads):
            thread = threading.Thread(target=self._run, args=(index, threads), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, index: int, stride: int) -> None:
        rng = random.Random(index)
        with RecommenderClient(self.target, timeout=10.0) as client:
            position = index
            while not self._stop.is_set():
                visit = self.visits[position % len(self.visits)]
                # Each pass over the visits is a new population of users (ids suffixed by the pass): a
                # few hundred users cycled for minutes would put a fixed, unbalanced set in each arm.
                cycle = position // len(self.visits)
                user = f"{visit.request.user_id}~{cycle}" if visit.request.user_id else ""
                visit = replace(visit, request=replace(visit.request, user_id=user))
                position += stride
                try:
                    answer = client.recommend(visit.request)
                    factor = self.penalty.get(visit.task, 1.0) if answer.arm == "canary" else 1.0
                    model = replace(
                        self.model,
                        click_relevant=self.model.click_relevant * factor,
                        click_other=self.model.click_other * factor,
                    )
                    events = list(user_feedback(visit, answer.item_ids, answer.impression_id, model, rng))
                    if events:
                        client.record_events(events)
                except UniRankError as error:
                    with self._lock:
                        self.failures += 1
                    print(f"  failed request: {error.code}: {error.message}", flush=True)
                    continue
                with self._lock:
                    self.requests += 1
                    key = (visit.task, answer.arm or "stable")
                    self.arms[key] = self.arms.get(key, 0) + 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def publish(source: Path, repo: Path, version: str) -> None:
    """``source`` copied into the repository as ``version`` (renamed into place: atomic)."""
    staging = repo / f".{version}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["model_version"] = version
    (staging / "manifest.json").write_text(json.dumps(manifest))
    staging.rename(repo / version)


def wait_finished(rollouts: RolloutClient, traffic: Traffic, limit_s: float) -> RolloutStatus:
    deadline = time.monotonic() + limit_s
    last = ""
    while time.monotonic() < deadline:
        status = rollouts.status()
        line = "  ".join(f"{t.task}={t.status}@{t.canary_percent:g}%" for t in status.tasks)
        if line != last:
            print(f"  [{traffic.requests} requests] {line}", flush=True)
            last = line
        if status.state == "finished":
            return status
        time.sleep(1.0)
    raise RuntimeError(f"rollout not finished within {limit_s:.0f} s:\n{format_rollout(rollouts.status())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--artifact", type=Path, default=ROOT / "build" / "artifact")
    parser.add_argument("--degraded", type=Path, default=ROOT / "build" / "kpi-random")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "rollout-demo")
    parser.add_argument("--per-task", type=int, default=400, help="held-out visits per use-case")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--search-penalty", type=float, default=0.6)
    parser.add_argument("--limit-s", type=float, default=240.0, help="longest a rollout may take")
    args = parser.parse_args(argv)
    started = time.monotonic()
    degraded = random_scoring_artifact(args.artifact, args.degraded)
    shutil.rmtree(args.out, ignore_errors=True)
    repo = args.out / "repo"
    repo.mkdir(parents=True)
    (repo / REPOSITORY_MARKER).touch()
    publish(args.artifact, repo, "v001")
    overrides = {
        "gate": {"enabled": True},
        "rollout": {**ROLLOUT, "state_file": str(args.out / "state.json")},
    }
    profile = derive_profile(load_profile(ROOT / "profiles" / "cpu-realtime.toml"), overrides)
    profile_path = write_profile(profile, args.out / "profile.toml")
    visits = held_out_visits(args.artifact, args.per_task, seed=0)
    print(f"{len(visits)} held-out visits over {len({v.task for v in visits})} use-cases", flush=True)
    process, target = serve(repo, profile_path)
    traffic = Traffic(target, visits, ClickModel(), {})
    results: dict[str, Any] = {}
    ok = True
    try:
        traffic.start(args.threads)
        with RolloutClient(target, timeout=120.0) as rollouts:
            print("\n1. v002 (degraded: an untrained network) offered", flush=True)
            publish(degraded, repo, "v002")
            try:
                rollouts.start()
                print("  NOT refused", flush=True)
                ok = False
            except UniRankError as error:
                print(f"  refused: {error.message}", flush=True)
                results["degraded"] = error.message
            with RecommenderClient(target) as client:
                serving = client.model_info().model_version
            print(f"  serving: {serving}", flush=True)
            ok &= serving == "v001" and "offline gate" in results.get("degraded", "")

            print("\n2. v003 (search worse online) rolled out", flush=True)
            traffic.penalty = {"search": args.search_penalty}
            publish(args.artifact, repo, "v003")
            rollouts.start()
            status = wait_finished(rollouts, traffic, args.limit_s)
            print(format_rollout(status), flush=True)
            decided = {t.task: t.status for t in status.tasks}
            results["search_worse"] = {t.task: {"status": t.status, "reason": t.reason} for t in status.tasks}
            ok &= decided.pop("search", "") == "rolled_back" and set(decided.values()) == {"promoted"}

            print("\n3. v004 (the same model again: A/A) rolled out", flush=True)
            traffic.penalty = {}
            publish(args.artifact, repo, "v004")
            rollouts.start()
            status = wait_finished(rollouts, traffic, args.limit_s)
            print(format_rollout(status), flush=True)
            results["aa"] = {t.task: {"status": t.status, "reason": t.reason} for t in status.tasks}
            ok &= {t.status for t in status.tasks} == {"promoted"}
    finally:
        traffic.stop()
        process.terminate()
        process.wait(30)
    results |= {
        "requests": traffic.requests,
        "failed_requests": traffic.failures,
        "answers_by_task_and_arm": {f"{t}/{a}": n for (t, a), n in sorted(traffic.arms.items())},
        "seconds": round(time.monotonic() - started, 1),
    }
    (args.out / "demo.json").write_text(json.dumps(results, indent=1))
    print(f"\n{traffic.requests} requests, {traffic.failures} failed, {results['seconds']} s", flush=True)
    ok &= traffic.failures == 0
    print("the story held" if ok else "the story did NOT hold", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
