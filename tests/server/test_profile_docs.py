"""docs/profiles.md documents every knob: its generated reference matches the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from unirank.server.config import TaskConfig
from unirank.server.profile_docs import BEGIN, END, SECTIONS, update

DOC = Path(__file__).resolve().parents[2] / "docs" / "profiles.md"


def test_reference_is_current() -> None:
    text = DOC.read_text()
    assert update(text) == text, "docs/profiles.md is stale: run `make docs`"


def test_every_knob_has_a_description() -> None:
    for _, model in SECTIONS:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
    assert "timeout_ms" in DOC.read_text() and TaskConfig.model_fields["timeout_ms"].description


def test_make_docs_says_updated_only_when_it_changed_the_file(tmp_path: Path) -> None:
    page = tmp_path / "profiles.md"
    page.write_text(f"intro\n{BEGIN}\nstale\n{END}\noutro\n")

    def run() -> str:
        command = [sys.executable, "-m", "unirank.server.profile_docs", str(page)]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    assert run() == f"updated {page}"
    written = page.read_text()
    assert run() == f"{page} is up to date"
    assert page.read_text() == written
