"""Real-data paths end to end: MovieLens files and UniRank logs -> labels -> artifact -> evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unirank.artifact import TASKS, load_artifact
from unirank.training.cli import main as cli_main
from unirank.training.config import TrainConfig
from unirank.training.logs import EventType
from unirank.training.logwriter import write_logs
from unirank.training.pipeline import evaluate_artifact, train_artifact
from unirank.training.synthetic import SyntheticConfig, generate

QUICK = {"epochs": 2, "steps_per_epoch": 8, "validation_rows_per_task": 100, "eval_rows_per_task": 200}


@pytest.fixture(scope="module")
def movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic plays written as an ml-latest release: ratings, movies (with years), tags."""
    log = generate(SyntheticConfig.preset("tiny"), seed=5)
    root = tmp_path_factory.mktemp("ml-latest-tiny")
    plays = log.events_of(EventType.PLAY)
    stars = 1.0 + np.random.default_rng(0).integers(0, 9, size=len(plays)) / 2.0
    seen: set[tuple[int, int]] = set()
    lines = ["userId,movieId,rating,timestamp"]
    for u, i, t, r in zip(
        plays.user.tolist(), plays.item.tolist(), plays.timestamp_ms.tolist(), stars.tolist(), strict=True
    ):
        if (u, i) not in seen:  # MovieLens has one rating per user and movie
            seen.add((u, i))
            lines.append(f"{u + 1},{i + 1},{r},{t // 1000}")
    (root / "ratings.csv").write_text("\r\n".join(lines) + "\r\n")
    movies = ["movieId,title,genres"] + [
        f'{i + 1},"{title} ({year})",{"|".join(cats)}'
        for i, (title, year, cats) in enumerate(
            zip(log.items.titles, log.items.release_year.tolist(), log.items.categories, strict=True)
        )
    ]
    (root / "movies.csv").write_text("\n".join(movies) + "\n")
    searches = log.events_of(EventType.SEARCH_CLICK)
    tags = [
        "userId,movieId,tag,timestamp",
        *[
            f"{u + 1},{i + 1},{q},{t // 1000}"
            for u, i, q, t in zip(
                searches.user.tolist(),
                searches.item.tolist(),
                searches.query,
                searches.timestamp_ms.tolist(),
                strict=True,
            )
        ][:300],
    ]
    (root / "tags.csv").write_text("\n".join(tags) + "\n")
    return root


def test_movielens_trains_an_artifact_for_every_use_case(movielens_dir: Path, tmp_path: Path) -> None:
    data = f"movielens:{movielens_dir}"
    out = train_artifact(TrainConfig.tiny(seed=0, data=data, **QUICK), tmp_path / "artifact", progress=None)
    artifact = load_artifact(out)
    counts = artifact.manifest["training_data"]["counts"]
    assert set(counts) == {spec.name for spec in TASKS}
    assert all(n > 0 for by_split in counts.values() for n in by_split.values()), counts
    assert artifact.catalog.titles[1] and "(" not in artifact.catalog.titles[1]  # the year left the title
    assert set(artifact.metrics["tasks"]) == {spec.name for spec in TASKS}
    again = evaluate_artifact(out, data)["tasks"]
    for task, by_scorer in artifact.metrics["tasks"].items():
        for scorer, values in by_scorer.items():
            assert again[task][scorer] == pytest.approx(values, abs=1e-9), (task, scorer)


def test_unirank_logs_train_and_evaluate_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = write_logs(generate(SyntheticConfig.preset("tiny"), seed=0), tmp_path / "logs")
    args = [
        "--data",
        f"logs:{logs}",
        "--size",
        "tiny",
        "--quiet",
        "--set",
        "epochs=2",
        "--set",
        "steps_per_epoch=8",
    ]
    assert cli_main(["train", *args, "--out", str(tmp_path / "artifact")]) == 0
    capsys.readouterr()
    assert (
        cli_main(["evaluate", "--artifact", str(tmp_path / "artifact"), "--data", f"logs:{logs}", "--json"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["tasks"]) == {spec.name for spec in TASKS}
    assert cli_main(["evaluate", "--artifact", str(tmp_path / "artifact"), "--data", "synthetic"]) == 1
    assert "was trained on" in capsys.readouterr().err
