"""The artifact: one versioned, checksummed directory that training writes and every profile loads.

Layout (names are fixed; ``manifest.json`` lists each other file with its sha256):

    manifest.json   schema version, model version, creation time, model config, encoder config,
                    training data summary, sha256 per file
    model.onnx      scoring graph with dynamic batch / history / query / candidate axes
    model.onnx.data the graph's large tables as ONNX external data, when the graph would pass
                    ``EXTERNAL_DATA_ABOVE_BYTES`` (large catalogues; protobuf stops at 2 GB)
    model.pt        the same weights for the torch backend (load with ``weights_only=True``)
    catalog.npz     items, titles, categories, maturity, years, popularity, vocabularies, as
                    columns of arrays (:mod:`unirank.artifact.catalog_file`); artifacts written
                    before it have ``catalog.json`` instead, still read
    retrieval.npz   item embeddings, related-item lists, popularity, lexical and category indexes
                    (mapped, not read: :mod:`unirank.artifact.arrays`)
    metrics.json    per-task offline metrics of this version and of the baselines it beat
    item_index.faiss  approximate nearest-neighbour index of the item embeddings (optional: older
                    artifacts lack it and serve exact embedding retrieval only)
    item_activity.npz the items' recent activity at the end of the training logs, for a model with
                    time features (``model_config.time_features``; older artifacts have neither)

Checksums are verified before any file is parsed, so a tampered file is never deserialised; the
files are hashed in parallel (hashlib releases the GIL), largest first. A reader that never opens
some listed files (a server's other backend's model: ``model.pt`` under ONNX Runtime, 745 MB at a
million items) names them ``unread``: they must be there, and are not hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unirank.artifact.activity import ACTIVITY_FILE, ItemActivity
from unirank.artifact.ann import ITEM_INDEX
from unirank.artifact.arrays import load_arrays, write_arrays
from unirank.artifact.catalog import Catalog
from unirank.artifact.features import FeatureEncoder

SCHEMA_VERSION = "1"
MANIFEST = "manifest.json"
MODEL_ONNX = "model.onnx"
MODEL_ONNX_DATA = "model.onnx.data"
"""The graph's external data (ONNX Runtime finds it beside ``model.onnx``); listed in the manifest
like any file, so a server verifies it before the graph is read."""
MODEL_TORCH = "model.pt"
CATALOG = "catalog.npz"
CATALOG_JSON = "catalog.json"
"""The catalogue of artifacts written before :data:`CATALOG`: read when it is the one listed."""
RETRIEVAL = "retrieval.npz"
METRICS = "metrics.json"
REQUIRED_FILES: tuple[str, ...] = (MODEL_ONNX, MODEL_TORCH, RETRIEVAL, METRICS)
"""Listed in every manifest, with one of :data:`CATALOG` and :data:`CATALOG_JSON`."""
INDEX_DTYPE = np.int32
"""Item and token indices as stored in ``retrieval.npz`` (half of int64: a million items' related
lists are 200 MB, not 400); older artifacts' int64 arrays load as they are."""

RETRIEVAL_ARRAYS: tuple[str, ...] = (
    "item_embeddings",  # float32 [n_items+1, d], L2-normalised, row 0 zeros
    "related_items",  # int32 [n_items+1, K] co-engagement neighbours, best first, 0-padded
    "popular_items",  # int32 [P] item indices, most popular first
    "lexical_indptr",  # int64 [n_tokens+1]: CSR over token index -> items (most popular first)
    "lexical_items",  # int32 [nnz]
    "category_indptr",  # int64 [n_categories+1]: CSR over category index -> items (popular first)
    "category_items",  # int32 [nnz]
)
OPTIONAL_RETRIEVAL_ARRAYS: tuple[str, ...] = (
    "user_history_indptr",  # int64 [n_users+1]: CSR over user index -> the user's training history
    "user_history_items",  # int32 [nnz], each user's distinct played items, oldest first
)
"""Arrays that artifacts written before them lack: they load as empty (no stored histories).
(int64 where artifacts written before :data:`INDEX_DTYPE` stored them so.)"""


class ArtifactError(Exception):
    """The artifact is missing, incomplete, tampered with or of an unknown schema."""


class IncompleteArtifact(ArtifactError):
    """A file the manifest lists is not there: a version still being copied in, or a broken one.

    A server retries such a version until it is complete or its publish timeout passes.
    """


REPOSITORY_MARKER = "unirank-repository"
"""The file that makes a directory an artifact repository: ``unirank serve --artifact DIR`` serves
its newest version. Without it a directory of versions is refused, so ``--artifact build`` never
serves whatever subdirectory happens to sort last."""


def init_repository(path: Path) -> Path:
    """Create ``path`` (and its parents) as an artifact repository; returns it. Idempotent."""
    path.mkdir(parents=True, exist_ok=True)
    (path / REPOSITORY_MARKER).touch()
    return path


def catalog_file(files: Collection[str]) -> str:
    """The catalogue among ``files`` (a manifest's, or a directory's): :data:`CATALOG`, else the
    older :data:`CATALOG_JSON`."""
    return CATALOG if CATALOG in files or CATALOG_JSON not in files else CATALOG_JSON


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(
    directory: Path,
    model_version: str,
    model_config: dict[str, Any],
    encoder_config: dict[str, Any],
    training_data: dict[str, Any],
    extra: dict[str, Any] | None = None,
    extra_files: Sequence[str] = (),
) -> dict[str, Any]:
    """Checksum every required file in ``directory`` and write ``manifest.json`` last.

    ``extra_files`` (names relative to ``directory``, e.g. training plots) are checksummed too,
    so :func:`verify_artifact` covers everything the artifact ships.
    """
    catalog = catalog_file({name for name in (CATALOG, CATALOG_JSON) if (directory / name).is_file()})
    names = list(dict.fromkeys([*REQUIRED_FILES, catalog, *extra_files]))
    bad = [name for name in names if name == MANIFEST or Path(name).is_absolute() or ".." in Path(name).parts]
    if bad:
        raise ArtifactError(f"{directory}: cannot list {bad} in the manifest")
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise ArtifactError(f"{directory}: cannot write manifest, missing {missing}")
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model_version": model_version,
        "created_unix_ms": int(time.time() * 1000),
        "model_config": model_config,
        "encoder": encoder_config,
        "training_data": training_data,
        "files": {name: sha256_file(directory / name) for name in names},
    }
    if extra:
        manifest.update(extra)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


@dataclass
class Retrieval:
    """Candidate-retrieval data of one artifact, all indices in the catalogue's item space."""

    item_embeddings: np.ndarray
    related_items: np.ndarray
    popular_items: np.ndarray
    lexical_indptr: np.ndarray
    lexical_items: np.ndarray
    category_indptr: np.ndarray
    category_items: np.ndarray
    user_history_indptr: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    user_history_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def user_history(self, user_index: int) -> np.ndarray:
        """The user's distinct items of the training logs, oldest first (empty when unknown)."""
        if user_index <= 0 or user_index + 1 >= len(self.user_history_indptr):
            return self.user_history_items[:0]
        indptr = self.user_history_indptr
        return self.user_history_items[indptr[user_index] : indptr[user_index + 1]]

    def lexical(self, token_index: int) -> np.ndarray:
        """Items whose title contains the token, most popular first."""
        if token_index <= 0 or token_index + 1 >= len(self.lexical_indptr):
            return self.lexical_items[:0]
        return self.lexical_items[self.lexical_indptr[token_index] : self.lexical_indptr[token_index + 1]]

    def category(self, category_index: int) -> np.ndarray:
        """Items of the category, most popular first."""
        if category_index <= 0 or category_index + 1 >= len(self.category_indptr):
            return self.category_items[:0]
        return self.category_items[
            self.category_indptr[category_index] : self.category_indptr[category_index + 1]
        ]

    def save(self, path: Path) -> None:
        """Item indices as :data:`INDEX_DTYPE`, aligned for :meth:`load` to map."""
        arrays = {name: getattr(self, name) for name in (*RETRIEVAL_ARRAYS, *OPTIONAL_RETRIEVAL_ARRAYS)}
        for name, array in arrays.items():
            if not name.endswith(("_indptr", "_embeddings")):
                if len(array) and int(np.max(array)) > np.iinfo(INDEX_DTYPE).max:
                    raise ArtifactError(f"{name}: an index past {np.dtype(INDEX_DTYPE).name}")
                arrays[name] = np.asarray(array, dtype=INDEX_DTYPE)
        write_arrays(path, arrays)

    @classmethod
    def load(cls, path: Path) -> Retrieval:
        """The arrays as read-only maps of the file (only the pages a request reads are loaded)."""
        data = load_arrays(path)
        missing = [name for name in RETRIEVAL_ARRAYS if name not in data]
        if missing:
            raise ArtifactError(f"{path}: missing arrays {missing}")
        present = [*RETRIEVAL_ARRAYS, *(name for name in OPTIONAL_RETRIEVAL_ARRAYS if name in data)]
        return cls(**{name: data[name] for name in present})


@dataclass
class Artifact:
    """A loaded, verified artifact. Model files stay paths: each backend loads its own."""

    path: Path
    manifest: dict[str, Any]
    catalog: Catalog
    retrieval: Retrieval
    metrics: dict[str, Any]
    activity: ItemActivity | None = None
    """The items' activity at the end of the training logs (time features); None without them."""

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def schema_version(self) -> str:
        return str(self.manifest["schema_version"])

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_ONNX

    @property
    def torch_path(self) -> Path:
        return self.path / MODEL_TORCH

    @property
    def item_index_path(self) -> Path | None:
        """The approximate nearest-neighbour index (:mod:`unirank.artifact.ann`), when the artifact
        ships one (listed, so checksummed, in the manifest); None for older artifacts."""
        return self.path / ITEM_INDEX if ITEM_INDEX in self.manifest.get("files", {}) else None

    def encoder(self) -> FeatureEncoder:
        cfg = self.manifest["encoder"]
        return FeatureEncoder(
            self.catalog,
            max_history=int(cfg["max_history"]),
            max_query_tokens=int(cfg["max_query_tokens"]),
            activity=None if self.activity is None else self.activity.copy(),
        )


def verify_artifact(path: Path, unread: Collection[str] = ()) -> dict[str, Any]:
    """Read the manifest and check every file's sha256 (``unread`` ones: that they are there);
    returns the manifest."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST} (not an artifact directory)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{manifest_path}: schema_version {found!r}, expected {SCHEMA_VERSION!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{manifest_path}: no 'files' table")
    for name in (*REQUIRED_FILES, catalog_file(files)):
        if name not in files:
            raise ArtifactError(f"{manifest_path}: {name} not listed")
    for name, expected in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in {".", ".."}:
            raise ArtifactError(f"{manifest_path}: file name {name!r} is not a plain name in the artifact")
        if not isinstance(expected, str):
            raise ArtifactError(f"{manifest_path}: checksum of {name} is {expected!r}, not a sha256 string")
        if not (path / name).is_file():
            raise IncompleteArtifact(f"{path}: {name} is missing")
    read = {name: expected for name, expected in files.items() if name not in unread}
    for name, (expected, actual) in zip(read, _hash_all(path, read), strict=True):
        if isinstance(actual, FileNotFoundError):  # removed between the check and the read
            raise IncompleteArtifact(f"{path}: {name} is missing") from actual
        if isinstance(actual, OSError):  # unreadable (permissions, I/O error)
            raise ArtifactError(f"{path}: cannot read {name}: {actual}") from actual
        if actual != expected:
            raise ArtifactError(
                f"{path}: checksum mismatch for {name} (manifest {expected[:12]}…, file {actual[:12]}…)"
            )
    check_manifest(manifest, manifest_path)
    return manifest


def _hash_all(path: Path, files: dict[str, str]) -> list[tuple[str, str | OSError]]:
    """(expected, actual sha256 or the error reading it) per file of ``files``, in its order; the
    files hashed on a thread per core, largest first, so the largest does not start last."""

    def digest(name: str) -> str | OSError:
        try:
            return sha256_file(path / name)
        except OSError as exc:
            return exc

    def size(name: str) -> int:
        try:
            return (path / name).stat().st_size
        except OSError:
            return 0

    order = sorted(files, key=size, reverse=True)
    with ThreadPoolExecutor(max_workers=max(1, min(len(order), os.cpu_count() or 1))) as pool:
        found = dict(zip(order, pool.map(digest, order), strict=True))
    return [(files[name], found[name]) for name in files]


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_manifest(manifest: dict[str, Any], source: Path) -> None:
    """Raise :class:`ArtifactError` unless the manifest holds every field a server reads, typed.

    A checksum proves a file was not changed after the manifest was written, not that what was
    written is well-formed: a malformed manifest is refused like a tampered one.
    """
    problems: list[str] = []
    version = manifest.get("model_version")
    if not isinstance(version, str) or not version:
        problems.append(f"model_version {version!r} is not a non-empty string")
    if "created_unix_ms" in manifest and not _is_int(manifest["created_unix_ms"]):
        problems.append(f"created_unix_ms {manifest['created_unix_ms']!r} is not an integer")
    model_config = manifest.get("model_config")
    if not isinstance(model_config, dict):
        problems.append("model_config is not a table")
    elif not _is_int(model_config.get("n_tasks"), 1):
        problems.append(f"model_config.n_tasks {model_config.get('n_tasks')!r} is not a positive integer")
    encoder = manifest.get("encoder")
    if not isinstance(encoder, dict):
        problems.append("encoder is not a table")
    else:
        for key in ("max_history", "max_query_tokens"):
            if not _is_int(encoder.get(key), 1):
                problems.append(f"encoder.{key} {encoder.get(key)!r} is not a positive integer")
    trained = manifest.get("trained_tasks")
    if trained is not None and not (isinstance(trained, list) and all(isinstance(t, str) for t in trained)):
        problems.append(f"trained_tasks {trained!r} is not a list of task names")
    if problems:
        raise ArtifactError(f"{source}: malformed manifest: {'; '.join(problems)}")


def check_metrics(metrics: Any, source: Path) -> None:
    """Raise :class:`ArtifactError` unless ``metrics.json`` has the shape servers read.

    ``tasks.<task>.model`` maps metric names to numbers; ``score_reference`` maps task names to
    tables (a malformed entry inside one only disables that task's drift).
    """
    if not isinstance(metrics, dict):
        raise ArtifactError(f"{source}: malformed metrics: a {type(metrics).__name__}, not a table")
    problems: list[str] = []
    for key in ("tasks", "score_reference", "evaluation"):
        if key in metrics and not isinstance(metrics[key], dict):
            problems.append(f"{key} is not a table")
    tasks = metrics.get("tasks")
    if isinstance(tasks, dict):
        for task, entry in tasks.items():
            if not isinstance(entry, dict):
                problems.append(f"tasks.{task} is not a table")
                continue
            values = entry.get("model", {})
            if not isinstance(values, dict) or not all(_is_number(v) for v in values.values()):
                problems.append(f"tasks.{task}.model is not a table of numbers")
    references = metrics.get("score_reference")
    if isinstance(references, dict):
        problems.extend(
            f"score_reference.{task} is not a table"
            for task, entry in references.items()
            if not isinstance(entry, dict)
        )
    if problems:
        raise ArtifactError(f"{source}: malformed metrics: {'; '.join(problems)}")


def load_artifact(path: str | Path, unread: Collection[str] = ()) -> Artifact:
    """Verify checksums (of every file but ``unread`` ones, which the caller never opens), then
    load the catalogue, retrieval data and metrics."""
    root = Path(path)
    manifest = verify_artifact(root, unread)
    try:
        catalog = Catalog.load(root / catalog_file(manifest["files"]))
        retrieval = Retrieval.load(root / RETRIEVAL)
        metrics = json.loads((root / METRICS).read_text())
        check_metrics(metrics, root / METRICS)
        activity = _load_activity(root, manifest, len(catalog.items))
    except ArtifactError:
        raise
    except Exception as exc:  # a verified file that still fails to parse is a broken artifact
        raise ArtifactError(f"{root}: cannot load artifact: {exc}") from exc
    return Artifact(
        path=root, manifest=manifest, catalog=catalog, retrieval=retrieval, metrics=metrics, activity=activity
    )


def _load_activity(root: Path, manifest: dict[str, Any], n_items: int) -> ItemActivity | None:
    """The item activity a model with time features needs; refused when missing or mis-sized."""
    if not bool(manifest.get("model_config", {}).get("time_features", False)):
        return None
    if ACTIVITY_FILE not in manifest.get("files", {}):
        raise ArtifactError(f"{root}: the model has time features but {ACTIVITY_FILE} is not listed")
    activity = ItemActivity.load(root / ACTIVITY_FILE)
    if activity.n_items != n_items:
        raise ArtifactError(
            f"{root}: {ACTIVITY_FILE} covers {activity.n_items} items, the catalogue {n_items}"
        )
    return activity
