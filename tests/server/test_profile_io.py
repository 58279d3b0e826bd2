"""Profile variants: derived from the validated profile, written back as TOML that loads the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PROFILES
from unirank.server.config import ProfileError, load_profile
from unirank.server.profile_io import derive_profile, dump_profile, write_profile

SHIPPED = sorted(path.stem for path in PROFILES.glob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_a_written_profile_loads_back_unchanged(name: str, tmp_path: Path) -> None:
    profile = load_profile(PROFILES / f"{name}.toml")
    assert load_profile(write_profile(profile, tmp_path / f"{name}.toml")) == profile


def test_a_variant_changes_only_what_it_names() -> None:
    base = load_profile(PROFILES / "gpu-batched.toml")
    variant = derive_profile(base, {"model": {"batching": {"enabled": False}}}, name="gpu-batched-nobatch")
    assert variant.name == "gpu-batched-nobatch" and not variant.model.batching.enabled
    assert variant.model.batching.max_batch_size == base.model.batching.max_batch_size
    assert variant.tasks == base.tasks and variant.server == base.server
    assert 'name = "gpu-batched-nobatch"' in dump_profile(variant)


def test_a_misspelt_override_fails_naming_the_key() -> None:
    base = load_profile(PROFILES / "cpu-realtime.toml")
    with pytest.raises(ProfileError, match="max_batch_sise"):
        derive_profile(base, {"model": {"batching": {"max_batch_sise": 8}}})
