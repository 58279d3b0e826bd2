"""The freshness loop end to end (scripts/refit_loop.py, ``make refit-demo``): a real server logs
RecordEvents events, they become training logs, a warm-start refit is published into the
repository and the server switches to it, while a caller's requests keep succeeding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 20
USERS, NEW_USERS = 10, 5


def test_events_become_a_refit_that_is_served_without_a_failed_request(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "refit_loop.py"),
            "--workdir",
            str(tmp_path / "work"),
            "--max-steps",
            str(MAX_STEPS),
            "--users",
            str(USERS),
            "--new-users",
            str(NEW_USERS),
            "--json",
            str(summary_path),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads(summary_path.read_text())

    requests = summary["requests"]
    assert requests["failed"] == 0, requests["errors"]
    # Both versions answered the caller: the switch happened under traffic.
    base, refit = summary["base_version"], summary["refit_version"]
    assert base != refit
    assert requests["by_version"].get(base, 0) > 0
    assert requests["by_version"].get(refit, 0) >= 20
    assert sum(requests["by_version"].values()) == requests["sent"] - requests["failed"]
    assert summary["new_version_served"] and summary["served_version"] == refit

    events = summary["events"]
    assert events["ignored"] == 1 and events["accepted"] == events["sent"] - 1
    assert sum(events["by_split"].values()) == events["accepted"]  # every accepted event was logged

    refit_run = summary["refit"]
    assert refit_run["steps"] <= refit_run["max_steps"] == MAX_STEPS
    assert refit_run["mapping"]["unknown_users"] == NEW_USERS
    assert refit_run["mapping"]["kept"] == refit_run["mapping"]["interactions"]
    assert summary["server_exit_code"] == 0

    manifests = [
        json.loads((version / "manifest.json").read_text())
        for version in sorted((tmp_path / "work" / "repository").iterdir())
        if version.is_dir()  # the repository marker is a file beside the versions
    ]
    assert [m["model_version"] for m in manifests] == [base, refit]
    assert manifests[1]["warm_started_from"] == base
