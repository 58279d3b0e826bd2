"""Where artifact versions come from: one artifact directory, or a repository of versions.

``--artifact PATH`` may name an artifact (a directory with ``manifest.json``) or a repository
(a directory marked by a ``unirank-repository`` file) whose subdirectories are artifact versions;
the newest subdirectory (by name, so timestamped version names sort by time) that has a manifest
is served. An unmarked directory of versions is refused with a sentence saying how to mark it.
Names starting with ``.`` are never served: publish a version atomically by copying it to such a
name and renaming it into place (docs/profiles.md, hot reload). New versions are picked up by
polling or on demand (SIGHUP, :meth:`UniRankServer.reload`).
"""

from __future__ import annotations

from pathlib import Path

from unirank.artifact.store import MANIFEST, REPOSITORY_MARKER, Artifact, ArtifactError

SAME_CATALOGUE_SHARE = 0.5
"""A new version keeps the catalogue when at least this share of the serving version's item ids
(a sample of them) is in its catalogue: refits add and drop items, another data set shares none."""
_CATALOGUE_SAMPLE = 10_000


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
    if not (root / REPOSITORY_MARKER).is_file():
        hint = ""
        if versions:
            names = ", ".join(p.name for p in versions[-3:])
            hint = (
                f"; it holds artifact versions ({names}): pass one of them, or mark the directory "
                f"as a repository whose newest version is served with `touch {root / REPOSITORY_MARKER}`"
            )
        raise ArtifactError(
            f"{root}: not an artifact (no {MANIFEST}) nor an artifact repository "
            f"(no {REPOSITORY_MARKER}){hint}"
        )
    if not versions:
        raise ArtifactError(f"{root}: an artifact repository with no version in it yet")
    return versions[-1]


def check_same_family(serving: Artifact, new: Artifact) -> None:
    """Raise ArtifactError when ``new`` is of another model family (architecture) or catalogue than
    ``serving``: a directory mix-up, not a new model (``[model] allow_catalog_change`` lets it in)."""
    before = serving.manifest.get("model_config", {}).get("architecture")
    after = new.manifest.get("model_config", {}).get("architecture")
    if before != after:
        raise ArtifactError(
            f"version {new.model_version} is a {after!r} model, the serving one a {before!r} model; "
            "set [model] allow_catalog_change = true to switch model families"
        )
    sample = list(serving.catalog.items.keys[1 : _CATALOGUE_SAMPLE + 1])
    if sample:
        kept = sum(key in new.catalog.items for key in sample) / len(sample)
        if kept < SAME_CATALOGUE_SHARE:
            raise ArtifactError(
                f"version {new.model_version} knows {kept:.0%} of the serving version's items (e.g. "
                f"{sample[0]!r}): another catalogue; set [model] allow_catalog_change = true to switch"
            )


Fingerprint = tuple[str, tuple[tuple[str, int, int], ...]]


def fingerprint(path: Path) -> Fingerprint:
    """Identifies one written state of a version: its directory and each file's name, size and
    modification time. A version still being copied changes its fingerprint as files arrive, so
    one refused while incomplete is tried again once it changes. Raises OSError if it vanishes."""
    files = sorted((entry.name, entry.stat()) for entry in path.iterdir() if entry.is_file())
    return (str(path.resolve()), tuple((name, st.st_size, st.st_mtime_ns) for name, st in files))
