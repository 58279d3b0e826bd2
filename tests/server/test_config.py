"""Profiles: every shipped profile validates; bad ones fail naming file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from unirank.server.config import ProfileError, load_profile

PROFILES = sorted((Path(__file__).resolve().parents[2] / "profiles").glob("*.toml"))


def test_shipped_profiles_exist_and_load() -> None:
    names = {p.stem for p in PROFILES}
    assert {"cpu-realtime", "gpu-batched", "search-edge"} <= names
    for path in PROFILES:
        profile = load_profile(path)
        assert profile.name == path.stem
        assert profile.tasks


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('name="x"\n[model]\nbackend="tensorflow"\n[tasks.search]\n', "model.backend"),
        ('name="x"\n[tasks.search]\ntimeout_ms=0\n', "tasks.search.timeout_ms"),
        ('name="x"\n[tasks.search]\ntimout_ms=10\n', "tasks.search.timout_ms: Extra inputs"),
        ('name="x"\n[tasks.podcasts]\n', "unknown task(s) ['podcasts']"),
        (
            'name="x"\n[tasks.search]\nrules.pre=[{name="nope"}]\n',
            "tasks.search.rules.pre.0: unknown rule 'nope'",
        ),
        ('name="x"\n[tasks.search]\nrules.pre=[{name="dedupe_titles"}]\n', "runs in the 'post' stage"),
        (
            'name="x"\n[tasks.search]\nrules.post=[{name="max_per_category", params={max=0}}]\n',
            "rules.post.0: params.max",
        ),
        ('name="x"\n[tasks.search]\ndefault_max_results=50\nmax_results_limit=10\n', "default_max_results"),
        ('name="x"\n[model]\nbatching={max_batch_size=0}\n[tasks.search]\n', "model.batching.max_batch_size"),
        ('name="x"\ntasks = {}\n', "tasks"),
        ("name = \n", "invalid TOML"),
    ],
)
def test_bad_profile_fails_naming_file_and_key(tmp_path: Path, body: str, expected: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "absent.toml")


def test_the_poll_interval_moved_to_the_model_section(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name="x"\n[tasks.search]\nfreshness={artifact_poll_interval_s=5}\n')
    with pytest.raises(ProfileError, match=r"moved to \[model\] artifact_poll_interval_s"):
        load_profile(path)
    moved = _write(tmp_path, 'name="x"\n[model]\nartifact_poll_interval_s=5\n[tasks.search]\n')
    assert load_profile(moved).model.artifact_poll_interval_s == 5
