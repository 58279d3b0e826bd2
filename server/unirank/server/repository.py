"""Where artifact versions come from: one artifact directory, or a repository of versions.

``--artifact PATH`` may name an artifact (a directory with ``manifest.json``) or a repository
whose subdirectories are artifact versions; the newest subdirectory (by name, so timestamped
version names sort by time) that has a manifest is served. New versions are picked up by
polling or on demand (SIGHUP, :meth:`UniRankServer.reload`).
"""

from __future__ import annotations

from pathlib import Path

from unirank.artifact.store import MANIFEST, ArtifactError


def is_artifact(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def resolve_artifact(path: str | Path) -> Path:
    """The artifact directory to serve for ``path``."""
    root = Path(path)
    if is_artifact(root):
        return root
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifact or repository directory")
    versions = sorted(p for p in root.iterdir() if p.is_dir() and is_artifact(p))
    if not versions:
        raise ArtifactError(f"{root}: neither an artifact (no {MANIFEST}) nor a repository of versions")
    return versions[-1]


def fingerprint(path: Path) -> tuple[str, int]:
    """Identifies one written version: its directory and its manifest's modification time."""
    return (str(path.resolve()), (path / MANIFEST).stat().st_mtime_ns)
