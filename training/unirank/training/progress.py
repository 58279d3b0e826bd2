"""Progress bars for long work (training steps, evaluation, comparison jobs, bench runs).

A bar is drawn on stderr only when stderr is a terminal: logs, CI and pipes get no bar, only the
lines the work prints anyway. tqdm is imported when a bar is made, so importing this costs nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether bars are drawn (stderr is an interactive terminal)."""
    return sys.stderr.isatty()


@contextmanager
def progress_bar(total: int, desc: str, unit: str = "it") -> Iterator[Any]:
    """A bar to ``update(n)`` over ``total`` units; a do-nothing stand-in off a terminal."""
    if not on_terminal():
        yield _Silent()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
        yield bar


def progress(items: Iterable[T], total: int, desc: str, unit: str = "it") -> Iterator[T]:
    """``items``, advancing a bar (on a terminal) as each is taken."""
    with progress_bar(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)


class _Silent:
    """The bar's interface, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr)
