"""Where artifact versions come from: one artifact directory, or a repository of versions.

``--artifact PATH`` may name an artifact (a directory with ``manifest.json``) or a repository
whose subdirectories are artifact versions; the newest subdirectory (by name, so timestamped
version names sort by time) that has a manifest is served. Names starting with ``.`` are never
served: publish a version atomically by copying it to such a name and renaming it into place
(docs/profiles.md, hot reload). New versions are picked up by polling or on demand (SIGHUP,
:meth:`UniRankServer.reload`).
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
    versions = sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and is_artifact(p)
    )
    if not versions:
        raise ArtifactError(f"{root}: neither an artifact (no {MANIFEST}) nor a repository of versions")
    return versions[-1]


Fingerprint = tuple[str, tuple[tuple[str, int, int], ...]]


def fingerprint(path: Path) -> Fingerprint:
    """Identifies one written state of a version: its directory and each file's name, size and
    modification time. A version still being copied changes its fingerprint as files arrive, so
    one refused while incomplete is tried again once it changes. Raises OSError if it vanishes."""
    files = sorted((entry.name, entry.stat()) for entry in path.iterdir() if entry.is_file())
    return (str(path.resolve()), tuple((name, st.st_size, st.st_mtime_ns) for name, st in files))
