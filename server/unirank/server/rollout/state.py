"""What a rollout remembers across restarts: its versions, and per use-case the step, the verdict and
the judges' e-processes; read and written as one small JSON file, replaced atomically.

Also the sticky split: which arm a user is in, from a hash of the user and the rollout id.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unirank.server.rollout.judge import JudgeState

CANARY = "canary"
"""A use-case whose new version is still being judged (and the arm that answers with it)."""
STABLE = "stable"
"""The arm answered by the version that served before the rollout (or after it, once promoted)."""
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
FORMAT = 1
"""Version of the state file's layout."""
STATE_NAME = ".unirank-rollout.json"
RETRAIN_NAME = ".unirank-retrain-request.json"


def bucket(user_key: str, rollout_id: str) -> float:
    """The user's sticky place in [0, 100) for one rollout: the canary answers users below its share,
    so a user in the canary stays there as the share grows, and a new rollout reshuffles users."""
    digest = hashlib.sha256(f"{rollout_id}\0{user_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 * 100.0


@dataclass
class TaskRollout:
    """One use-case's part in a rollout."""

    stable_version: str
    """The version answering this use-case's stable arm (pinned to it when rolled back)."""
    status: str = CANARY
    step: int = 0
    step_started_at: int = 0
    """Canary impressions (cumulative) when the current step began."""
    verdict: str = "continue"
    reason: str = "just started"
    ctr: JudgeState = field(default_factory=JudgeState)
    engagement: JudgeState = field(default_factory=JudgeState)
    """Plays per impression, judged like clicks (``[rollout] judge_engagement``)."""
    e_value: float = 1.0
    operator: bool = False
    """Decided by an operator (promote / abort), not by the judges or guards."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "stable_version": self.stable_version,
            "status": self.status,
            "step": self.step,
            "step_started_at": self.step_started_at,
            "verdict": self.verdict,
            "reason": self.reason,
            "ctr": self.ctr.to_dict(),
            "engagement": self.engagement.to_dict(),
            "e_value": self.e_value,
            "operator": self.operator,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRollout:
        status = str(data["status"])
        if status not in (CANARY, PROMOTED, ROLLED_BACK):
            raise ValueError(f"unknown task status {status!r}")
        return cls(
            stable_version=str(data["stable_version"]),
            status=status,
            step=int(data["step"]),
            step_started_at=int(data["step_started_at"]),
            verdict=str(data["verdict"]),
            reason=str(data["reason"]),
            ctr=JudgeState.from_dict(data["ctr"]),
            engagement=JudgeState.from_dict(data["engagement"]),
            e_value=float(data["e_value"]),
            operator=bool(data.get("operator", False)),
        )


@dataclass
class Rollout:
    """One canary version judged per use-case against the versions serving them."""

    rollout_id: str
    canary_version: str
    versions: dict[str, str]
    """Every version the rollout serves -> its artifact directory (a restart loads them again)."""
    steps: tuple[float, ...]
    tasks: dict[str, TaskRollout]
    started_unix_ms: int
    finished_unix_ms: int = 0
    retrain_request: str = ""
    """The retrain request file written for the rolled-back use-cases; empty until one is."""

    @property
    def active(self) -> bool:
        return any(task.status == CANARY for task in self.tasks.values())

    @property
    def canary_path(self) -> str:
        return self.versions[self.canary_version]

    def share(self, task: str) -> float:
        """Percent of ``task``'s users the canary answers now."""
        state = self.tasks[task]
        if state.status == PROMOTED:
            return 100.0
        if state.status == ROLLED_BACK:
            return 0.0
        return self.steps[state.step]

    def serving_version(self, task: str) -> str:
        """The version that answers ``task``'s users outside the canary (all of them once decided)."""
        state = self.tasks[task]
        return self.canary_version if state.status == PROMOTED else state.stable_version

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "rollout_id": self.rollout_id,
            "canary_version": self.canary_version,
            "versions": dict(self.versions),
            "steps": list(self.steps),
            "tasks": {name: task.to_dict() for name, task in sorted(self.tasks.items())},
            "started_unix_ms": self.started_unix_ms,
            "finished_unix_ms": self.finished_unix_ms,
            "retrain_request": self.retrain_request,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        if data.get("format") != FORMAT:
            raise ValueError(f"state format {data.get('format')!r}, this server reads {FORMAT}")
        rollout = cls(
            rollout_id=str(data["rollout_id"]),
            canary_version=str(data["canary_version"]),
            versions={str(k): str(v) for k, v in dict(data["versions"]).items()},
            steps=tuple(float(s) for s in data["steps"]),
            tasks={str(k): TaskRollout.from_dict(v) for k, v in dict(data["tasks"]).items()},
            started_unix_ms=int(data["started_unix_ms"]),
            finished_unix_ms=int(data["finished_unix_ms"]),
            retrain_request=str(data.get("retrain_request", "")),
        )
        known = set(rollout.versions)
        if rollout.canary_version not in known or any(
            t.stable_version not in known for t in rollout.tasks.values()
        ):
            raise ValueError("a version the rollout serves has no artifact directory in 'versions'")
        return rollout


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """``path`` holds either its old content or all of ``data``, whatever happens meanwhile: written to
    a temporary file in the same directory, flushed to disk, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(data, file, indent=1, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_rollout(path: Path, rollout: Rollout) -> None:
    write_json_atomically(path, rollout.to_dict())


def load_rollout(path: Path) -> Rollout | None:
    """The saved rollout, None where none was ever saved; ValueError naming the file if unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return Rollout.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a rollout state this server can resume: {exc}") from exc


def rollout_paths(state_file: str, retrain_file: str, artifact_path: Path) -> tuple[Path, Path]:
    """(state file, retrain request file) of a server serving ``artifact_path``: the profile's, else
    in the artifact repository (beside the artifact where it is one)."""
    root = artifact_path if artifact_path.is_dir() else artifact_path.parent
    if (root / "manifest.json").is_file():  # one artifact, not a repository
        root = root.parent
    state = Path(state_file) if state_file else root / STATE_NAME
    return state, Path(retrain_file) if retrain_file else state.parent / RETRAIN_NAME


def write_retrain_request(path: Path, rollout: Rollout) -> list[str]:
    """Write the retrain request of ``rollout``'s use-cases the judges or guards rolled back (not the
    operator); returns them."""
    failing = {
        name: {"reason": task.reason, "stable_version": task.stable_version}
        for name, task in sorted(rollout.tasks.items())
        if task.status == ROLLED_BACK and not task.operator
    }
    write_json_atomically(
        path,
        {
            "rollout_id": rollout.rollout_id,
            "version": rollout.canary_version,
            "tasks": sorted(failing),
            "failures": failing,
            "written_unix_ms": int(time.time() * 1000),
        },
    )
    rollout.retrain_request = str(path)
    return sorted(failing)
