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


def test_training_epochs_draw_a_tqdm_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from unirank.training import train as train_module

    terminal = _Terminal()
    monkeypatch.setattr(train_module.sys, "stderr", terminal)
    lines: list[str] = []
    bar = train_module.ProgressBar(lines.append, 10, "epoch  1/3", live=True)
    for step in range(1, 11):
        bar.update(step, {"search": 1.0 / step})
    bar.close()
    assert "epoch  1/3" in terminal.getvalue() and "step" in terminal.getvalue()
    assert lines == []  # on a terminal the bar is drawn, not logged


def test_training_epochs_off_a_terminal_log_a_line_now_and_then() -> None:
    from unirank.training.train import ProgressBar

    lines: list[str] = []
    bar = ProgressBar(lines.append, 10, "epoch  1/3", live=False, every_s=0.0)
    for step in range(1, 11):
        bar.update(step, {"search": 0.5})
    bar.close()
    assert len(lines) == 9 and lines[0].startswith("epoch  1/3 [") and "search=0.500" in lines[0]
