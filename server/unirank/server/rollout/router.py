"""What the ranking pipeline asks while canary rollouts are on: which version and arm answer a
request, and where to report how each answer went (implemented by the rollout controller)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from unirank.server.runtime import ModelRuntime


class ArmRouter(Protocol):
    def route(self, task: str, user_key: str) -> tuple[ModelRuntime, str]:
        """The runtime and arm that answer ``task`` for ``user_key`` (sticky per user)."""
        ...

    def answered(self, task: str, arm: str, fallback: bool, seconds: float, user_key: str = "") -> None:
        """An answer of ``arm`` to ``user_key`` (the key :meth:`route` was given)."""
        ...

    def failed(self, task: str, arm: str) -> None:
        """A server-side failure (model or deadline) of ``arm``: counts against its guards."""
        ...
