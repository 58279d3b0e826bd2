"""The drift window and the artifact's score references."""

from __future__ import annotations

from pathlib import Path

import pytest

from unirank.artifact import TASKS, load_artifact
from unirank.server.telemetry.drift import DriftWindow, ScoreReference, psi

REFERENCE = ScoreReference(edges=(0.0, 1.0, 2.0, 3.0), fractions=(0.25, 0.5, 0.25))


def test_scores_bin_on_the_reference_edges_with_open_outer_bins() -> None:
    window = DriftWindow(REFERENCE, window=8, min_samples=1)
    for score in (-5.0, 0.5, 1.0, 1.5, 2.5, 99.0, 2.0, 1.2):
        window.observe(score)
    # bins: [<1) gets -5, 0.5; [1, 2) gets 1.0, 1.5, 1.2; [>=2) gets 2.5, 99, 2.0
    assert window.live_fractions() == [2 / 8, 3 / 8, 3 / 8]
    assert window.psi() == pytest.approx(psi(REFERENCE.fractions, [2 / 8, 3 / 8, 3 / 8]))


def test_the_window_slides_and_psi_waits_for_min_samples() -> None:
    window = DriftWindow(REFERENCE, window=4, min_samples=3)
    window.observe(0.5)
    window.observe(0.5)
    assert window.psi() is None and window.samples == 2
    for _ in range(4):
        window.observe(2.5)  # pushes both low scores out
    assert window.samples == 4
    assert window.live_fractions() == [0.0, 0.0, 1.0]
    assert window.psi() == pytest.approx(psi(REFERENCE.fractions, [0.0, 0.0, 1.0]))


def test_matching_live_scores_have_near_zero_psi() -> None:
    window = DriftWindow(REFERENCE, window=400, min_samples=1)
    for i in range(400):
        window.observe((0.5, 1.2, 1.7, 2.5)[i % 4])
    assert window.psi() == pytest.approx(0.0, abs=1e-12)


def test_references_come_from_the_artifact_metrics(artifact_dir: Path) -> None:
    references = ScoreReference.from_metrics(load_artifact(artifact_dir).metrics)
    assert set(references) == {spec.name for spec in TASKS}
    for reference in references.values():
        assert len(reference.edges) == reference.bins + 1
        assert sum(reference.fractions) == pytest.approx(1.0)
    assert ScoreReference.from_metrics({}) == {}
    assert ScoreReference.from_metrics({"score_reference": {"search": {"edges": [1.0]}}}) == {}
