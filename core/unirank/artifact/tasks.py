"""The registry of use-cases (tasks). Adding a use-case starts with one entry here.

docs/adding-a-use-case.md walks through the rest (proto, labels, serving, client) with
``new_releases`` as the worked example.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TaskType(enum.IntEnum):
    """Task ids: the model input ``task`` and the proto enum ``unirank.v1.TaskType`` share them."""

    UNSPECIFIED = 0
    NOTIFICATION = 1
    RELATED_ITEMS = 2
    SEARCH = 3
    CATEGORY = 4
    NEW_RELEASES = 5


HEAD_OFFSET = 1
"""Task id minus this is the index of the model head that scores it (UNSPECIFIED, 0, has none)."""


@dataclass(frozen=True)
class TaskSpec:
    """One use-case: its id, its short name (metrics, configs, logs) and its proto oneof field."""

    task_type: TaskType
    name: str
    context_field: str

    @property
    def head_index(self) -> int:
        """The model head that scores this task (task id - ``HEAD_OFFSET``; id 0 is never a model
        task). The network applies the same offset to its task input (``unirank.model.net``)."""
        return int(self.task_type) - HEAD_OFFSET


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(TaskType.NOTIFICATION, "notification", "notification"),
    TaskSpec(TaskType.RELATED_ITEMS, "related_items", "related_items"),
    TaskSpec(TaskType.SEARCH, "search", "search"),
    TaskSpec(TaskType.CATEGORY, "category", "category"),
    TaskSpec(TaskType.NEW_RELEASES, "new_releases", "new_releases"),
)

_BY_NAME = {spec.name: spec for spec in TASKS}
_BY_TYPE = {spec.task_type: spec for spec in TASKS}


def task_by_name(name: str) -> TaskSpec:
    """The task called ``name``; raises KeyError naming the known tasks otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(_BY_NAME)}") from None


def task_by_type(task_type: TaskType | int) -> TaskSpec:
    """The task with id ``task_type``."""
    return _BY_TYPE[TaskType(task_type)]
