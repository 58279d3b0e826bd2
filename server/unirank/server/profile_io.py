"""Deriving and writing profiles: the one way tools make a variant of a shipped profile.

A variant is the validated profile with overrides merged into it (``derive_profile``), written
back as TOML that ``load_profile`` reads to the same profile (``write_profile``). Benchmarks, the
stress runner, the refit demo and tests use these instead of reading or regex-editing TOML text.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from unirank.server.config import Profile, parse_profile


def derive_profile(profile: Profile, overrides: Mapping[str, Any], name: str | None = None) -> Profile:
    """``profile`` with ``overrides`` merged in (nested tables merge key by key; any other value,
    lists included, replaces), validated like a file; ``name`` renames it."""
    data = profile.model_dump(mode="json", exclude_none=True)
    _merge(data, overrides)
    if name is not None:
        data["name"] = name
    return parse_profile(data, f"{profile.name} with overrides")


def dump_profile(profile: Profile) -> str:
    """The TOML text of ``profile`` (every key, defaults included)."""
    return tomli_w.dumps(profile.model_dump(mode="json", exclude_none=True))


def write_profile(profile: Profile, path: Path) -> Path:
    """Write ``profile`` to ``path`` as TOML; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_profile(profile))
    return path


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
