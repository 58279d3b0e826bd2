"""The impression store's contract: what an answer contained, by its server-issued id."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


def new_impression_id() -> str:
    """A fresh, unguessable impression id (96 random bits, 24 hex characters)."""
    return secrets.token_hex(12)


@dataclass(frozen=True)
class Impression:
    """One answer as the user saw it."""

    task: str
    model_version: str
    profile: str
    arm: str
    items: tuple[str, ...]
    """Ranked item ids; an item's position is its 1-based index."""
    user_id: str
    time_ms: int
    """When the answer was issued (Unix milliseconds)."""
    expires_ms: int
    """End of its use-case's attribution window (Unix milliseconds)."""

    def position_of(self, item_id: str) -> int:
        """1-based position of ``item_id`` in the answer; 0 when the answer did not contain it."""
        try:
            return self.items.index(item_id) + 1
        except ValueError:
            return 0

    def to_json(self) -> str:
        return json.dumps(
            [self.task, self.model_version, self.profile, self.arm, self.items, self.user_id,
             self.time_ms, self.expires_ms],
            separators=(",", ":"),
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str | bytes) -> Impression:
        task, version, profile, arm, items, user, time_ms, expires_ms = json.loads(text)
        return cls(task, version, profile, arm, tuple(items), user, int(time_ms), int(expires_ms))


@dataclass(frozen=True)
class Feedback:
    """A RecordEvents event that names the impression it is about."""

    impression_id: str
    user_id: str
    item_id: str
    event_type: int
    """``unirank.v1.EventType`` value."""
    position: int
    """1-based position the caller reports; 0: not sent."""
    engagement_seconds: float
    event_id: str
    """Empty: never deduplicated."""


class ImpressionStoreError(Exception):
    """The store could not be reached; ``str()`` names no address (``detail`` does, for the log)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


class ImpressionStore(Protocol):
    name: str

    @property
    def inline(self) -> bool:
        """Answers without suspending (in process): no timer is set around calls."""
        ...

    async def put(self, impression_id: str, impression: Impression) -> None:
        """Remember ``impression`` until its ``expires_ms``."""
        ...

    async def get_many(self, impression_ids: Sequence[str]) -> dict[str, Impression]:
        """The impressions still remembered among ``impression_ids`` (expired ones are absent)."""
        ...

    async def claim(self, event_ids: Sequence[str], ttl_ms: int) -> list[bool]:
        """Mark each event id as counted; True where it was not counted before (a first delivery)."""
        ...

    async def close(self) -> None: ...
