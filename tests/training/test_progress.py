"""Progress bars: drawn on a terminal, never in logs, CI or pipes."""

from __future__ import annotations

import io

import pytest

from unirank.training import progress as progress_module
from unirank.training.progress import progress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(3), 3, "steps")) == [0, 1, 2]
    with progress_bar(5, "jobs") as bar:
        bar.update(5)
    assert capsys.readouterr().err == ""


def test_a_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(progress_module.sys, "stderr", terminal)
    assert list(progress(range(4), 4, "steps", unit="step")) == [0, 1, 2, 3]
    assert "steps:" in terminal.getvalue() and "/4 [" in terminal.getvalue()
