"""The freshness loop end to end: events -> logs -> refit -> reload, under live traffic.

    python scripts/refit_loop.py [--workdir build/refit-demo] [--max-steps 60] [--json SUMMARY]

1. writes base logs (the seeded synthetic catalogue, UniRank log format) and trains a base
   artifact from them into an artifact repository (``unirank train``);
2. starts a real server (``unirank serve --port 0``) on the repository under cpu-realtime plus
   ``[features] event_log`` and an artifact poll interval;
3. starts a background caller that sends requests for every use-case the whole time and counts
   failures;
4. sends engagements through the real client's ``record_events`` (users the base knows, users it
   does not, and an item the model does not know, which the server ignores);
5. turns the base logs plus the server's event log into a new log directory
   (``python -m unirank.training.eventlogs``);
6. refits (``unirank train --warm-start``) into a staging directory and publishes the new version
   by renaming it into the repository;
7. waits until ``GetModelInfo`` reports the new version (the server polls the repository), keeps
   calling until the new version has answered 20 requests, stops the server and prints a
   summary. Exit status 1 when any request failed or the new version was not served.

Every step is the command an operator would run; see docs/deployment.md, "Freshness loop".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_PROFILE = REPO_ROOT / "profiles" / "cpu-realtime.toml"
POLL_INTERVAL_S = 0.5
AFTER_RELOAD = 20
"""Requests the new version must answer before the caller stops."""
STARTED = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def run(command: list[str], label: str, quiet: bool) -> None:
    """Run a step's command, streaming its output prefixed (or only on failure when quiet)."""
    say(f"{label}: {' '.join(command[2:] if command[:2] == [sys.executable, '-m'] else command)}")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip())
        if not quiet:
            print(f"    | {line.rstrip()}", flush=True)
    if process.wait() != 0:
        if quiet:
            print("\n".join(f"    | {line}" for line in lines[-40:]), file=sys.stderr)
        raise SystemExit(f"{label} failed (exit {process.returncode})")


def version_name() -> str:
    """Repository version directories sort by name, so name them by UTC time (with microseconds)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def write_demo_profile(path: Path, event_log: Path) -> None:
    """cpu-realtime with an event log and a repository poll interval."""
    from unirank.server.config import load_profile
    from unirank.server.profile_io import derive_profile, write_profile

    base = load_profile(BASE_PROFILE)
    overrides = {
        "features": {"store": "memory", "event_log": str(event_log)},
        "model": {"artifact_poll_interval_s": POLL_INTERVAL_S},
    }
    write_profile(derive_profile(base, overrides), path)


class Server:
    """``unirank serve`` in a subprocess on a free port; its output is kept for the summary."""

    def __init__(self, profile: Path, repository: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "unirank.cli",
                "serve",
                "--profile",
                str(profile),
                "--artifact",
                str(repository),
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO_ROOT,
        )
        self.lines: list[str] = []
        self.address = ""
        ready = threading.Event()

        def drain() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line.rstrip())
                found = re.search(r"serving \S+ on (\S+)", line)
                if found and not self.address:
                    self.address = found.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(120) or not self.address:
            self.stop()
            raise SystemExit("the server did not start:\n" + "\n".join(self.lines[-30:]))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class Caller(threading.Thread):
    """Sends one request after another (every use-case in turn) until stopped; counts outcomes."""

    def __init__(self, target: str, user: str, item: str, query: str, category: str) -> None:
        super().__init__(daemon=True)
        from unirank.client import RecommenderClient

        self.client = RecommenderClient(target, timeout=10.0)
        self.calls = [
            lambda: self.client.notification(user),
            lambda: self.client.related_items(item, user_id=user),
            lambda: self.client.search(query, user_id=user),
            lambda: self.client.category(category, user_id=user),
            lambda: self.client.new_releases(user),
        ]
        self.sent = self.failed = self.fallbacks = 0
        self.versions: Counter[str] = Counter()
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            call = self.calls[self.sent % len(self.calls)]
            self.sent += 1
            try:
                ranking = call()
            except Exception as exc:  # every failure counts, whatever raised it
                self.failed += 1
                if len(self.errors) < 10:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                self.versions[ranking.model_version] += 1
                self.fallbacks += ranking.fallback
            self._halt.wait(0.01)  # ~100 requests/s at most: leave the CPUs to the refit

    def stop(self) -> None:
        self._halt.set()
        self.join(30)
        self.client.close()


def send_events(target: str, artifact_dir: Path, users: int, new_users: int) -> dict[str, int]:
    """Engagements through the real client: known users, users new to the model, and one event
    about an item the model does not know (the server ignores it and does not log it)."""
    import numpy as np

    from unirank.artifact import load_artifact
    from unirank.client import Event, RecommenderClient

    catalog = load_artifact(artifact_dir).catalog
    rng = np.random.default_rng(7)
    now_ms = int(time.time() * 1000)
    events: list[Event] = []
    known_users = catalog.users.keys[1 : users + 1]
    for user in known_users:
        for item in rng.choice(catalog.items.keys[1:], size=5, replace=False).tolist():
            events.append(Event(user, item, "play", now_ms - int(rng.integers(1, 600_000))))
    categories = catalog.categories.keys[1:]
    for n in range(new_users):
        # A new user who watches one genre, over the last hour: a history the refit can learn from.
        genre = categories[n % len(categories)]
        items = [
            catalog.items.key(i) for i in range(1, len(catalog.items)) if genre in catalog.item_categories[i]
        ]
        for k, item in enumerate(rng.choice(items, size=min(12, len(items)), replace=False).tolist()):
            kind = "notification_open" if k == 3 else "play"
            events.append(Event(f"fresh-{n:03d}", item, kind, now_ms - 3_600_000 + k * 240_000))
    events.append(Event(known_users[0], "no-such-item", "play", now_ms))
    accepted = ignored = 0
    with RecommenderClient(target, timeout=10.0) as client:
        for start in range(0, len(events), 100):
            recorded = client.record_events(events[start : start + 100])
            accepted, ignored = accepted + recorded.accepted, ignored + recorded.ignored
    return {"sent": len(events), "accepted": accepted, "ignored": ignored}


def split_of_events(logs: Path, events_csv: Path) -> dict[str, int]:
    """Where the logged events fall in the refit's per-user split (train / validation / test)."""
    import csv

    import numpy as np

    from unirank.artifact.logformat import parse_timestamp_ms
    from unirank.training.examples import SPLITS, UserSplit
    from unirank.training.logreader import read_logs

    log = read_logs(logs)
    split = UserSplit.from_logs(log)
    user_row = {user: row for row, user in enumerate(log.user_ids)}
    with events_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    users = np.array([user_row[r["user_id"]] for r in rows], dtype=np.int64)
    times = np.array([parse_timestamp_ms(r["timestamp"]) for r in rows], dtype=np.int64)
    counts = np.bincount(split.assign(users, times), minlength=len(SPLITS))
    return {name: int(counts[i]) for i, name in enumerate(SPLITS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "build" / "refit-demo")
    parser.add_argument("--size", default="tiny", help="synthetic preset of the base logs and model")
    parser.add_argument("--max-steps", type=int, default=60, help="refit step bound")
    parser.add_argument("--users", type=int, default=40, help="known users who send events")
    parser.add_argument("--new-users", type=int, default=20, help="users new to the model who send events")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    parser.add_argument("--quiet", action="store_true", help="hide the steps' own output")
    args = parser.parse_args(argv)

    work = args.workdir.resolve()
    if work.exists():
        shutil.rmtree(work)
    repository, staging = work / "repository", work / "staging"
    from unirank.artifact.store import init_repository

    init_repository(repository)
    staging.mkdir()
    base_logs, new_logs, events_csv = work / "logs-base", work / "logs-refit", work / "events.csv"
    profile = work / "profile.toml"
    python = [sys.executable, "-m"]
    timings: dict[str, float] = {}

    phase = time.perf_counter()
    from unirank.training.logwriter import write_logs
    from unirank.training.sources import load_logs

    write_logs(load_logs("synthetic", size=args.size, seed=0), base_logs)
    say(f"base logs: {base_logs}")
    v1 = version_name()
    run(
        [*python, "unirank.cli", "train", "--data", f"logs:{base_logs}", "--size", args.size,
         "--out", str(repository / v1), "--quiet"],
        "train the base model", args.quiet,
    )  # fmt: skip
    timings["base_train_s"] = time.perf_counter() - phase
    write_demo_profile(profile, events_csv)

    phase = time.perf_counter()
    server = Server(profile, repository)
    timings["server_start_s"] = time.perf_counter() - phase
    say(f"server up on {server.address} (profile cpu-realtime + event log), serving {v1}")
    caller: Caller | None = None
    try:
        import numpy as np

        from unirank.artifact import load_artifact
        from unirank.client import RecommenderClient

        base = load_artifact(repository / v1)
        catalog = base.catalog
        query = catalog.tokens.key(int(np.argmax(np.diff(base.retrieval.lexical_indptr))))  # most items
        first_category = catalog.categories.key(1)
        caller = Caller(server.address, catalog.users.key(1), catalog.items.key(1), query, first_category)
        caller.start()
        say("background caller started (notification, related items, search, category, new releases in turn)")

        phase = time.perf_counter()
        recorded = send_events(server.address, repository / v1, args.users, args.new_users)
        timings["record_events_s"] = time.perf_counter() - phase
        say(
            f"RecordEvents: {recorded['sent']} sent, {recorded['accepted']} accepted, "
            f"{recorded['ignored']} ignored (unknown item)"
        )

        phase = time.perf_counter()
        run(
            [*python, "unirank.training.eventlogs", "--base", f"logs:{base_logs}", "--events",
             str(events_csv), "--out", str(new_logs)],
            "event log + base logs -> new logs", args.quiet,
        )  # fmt: skip
        timings["merge_s"] = time.perf_counter() - phase
        event_split = split_of_events(new_logs, events_csv)
        say(f"logged events by the refit's per-user split: {event_split}")

        phase = time.perf_counter()
        v2 = version_name()
        run(
            [*python, "unirank.cli", "train", "--warm-start", str(repository / v1), "--data",
             f"logs:{new_logs}", "--max-steps", str(args.max_steps), "--out", str(staging / v2)],
            "refit (warm start)", args.quiet,
        )  # fmt: skip
        timings["refit_s"] = time.perf_counter() - phase
        refit = json.loads((staging / v2 / "manifest.json").read_text())
        os.rename(staging / v2, repository / v2)  # publish: one atomic rename into the repository
        say(
            f"published {v2} (model {refit['model_version']}, warm-started from {refit['warm_started_from']})"
        )

        phase = time.perf_counter()
        served = ""
        with RecommenderClient(server.address, timeout=10.0) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                served = client.model_info().model_version
                if served == refit["model_version"]:
                    break
                time.sleep(0.1)
        timings["reload_s"] = time.perf_counter() - phase
        say(f"GetModelInfo reports {served} after {timings['reload_s']:.1f}s")
        until = time.monotonic() + 60  # keep calling until the new version has answered a few
        while caller.versions[served] < AFTER_RELOAD and time.monotonic() < until:
            time.sleep(0.05)
    finally:
        if caller is not None:
            caller.stop()
        exit_code = server.stop()

    metrics = json.loads((repository / v2 / "metrics.json").read_text())["tasks"]
    parent_metrics = refit["warm_start"]["parent_test_metrics"]
    summary: dict[str, Any] = {
        "base_version": base.model_version,
        "refit_version": refit["model_version"],
        "served_version": served,
        "new_version_served": served == refit["model_version"],
        "requests": {
            "sent": caller.sent,
            "failed": caller.failed,
            "fallbacks": caller.fallbacks,
            "by_version": dict(caller.versions),
            "errors": caller.errors,
        },
        "events": {**recorded, "by_split": event_split},
        "refit": {
            "steps": refit["training"]["steps"],
            "max_steps": refit["warm_start"]["max_steps"],
            "learning_rate": refit["warm_start"]["learning_rate"],
            "mapping": refit["training_data"]["mapped_onto_parent"],
            "test_ndcg@10": {
                task: {
                    "parent": parent_metrics[task]["ndcg@10"],
                    "refit": metrics[task]["model"]["ndcg@10"],
                }
                for task in metrics
                if task in parent_metrics
            },
        },
        "timings_s": {name: round(value, 2) for name, value in timings.items()},
        "server_exit_code": exit_code,
    }
    requests = summary["requests"]
    say(
        f"summary: {requests['sent']} requests, {requests['failed']} failed, {requests['fallbacks']} "
        f"fallbacks; by version {requests['by_version']}; refit {summary['refit']['steps']} steps; "
        f"new version served: {summary['new_version_served']}"
    )
    for task, values in summary["refit"]["test_ndcg@10"].items():
        say(f"  test ndcg@10 {task:<14} parent {values['parent']:.4f} -> refit {values['refit']:.4f}")
    say("  timings: " + ", ".join(f"{name} {value:.1f}" for name, value in summary["timings_s"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    ok = requests["failed"] == 0 and summary["new_version_served"]
    if not ok:
        print("FAILED: " + "; ".join(requests["errors"]) if requests["errors"] else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
