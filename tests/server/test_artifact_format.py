"""The artifact's array files as a server maps them (issue #18): ``catalog.npz`` columns equal the
catalogue they were written from, retrieval indices are int32 maps, and an artifact of the older
format (``catalog.json``, int64 ``np.savez`` arrays) still loads to the same catalogue."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from unirank.artifact import ArtifactError, Catalog, load_artifact
from unirank.artifact import catalog as catalog_module
from unirank.artifact.arrays import ALIGN, load_arrays, write_arrays
from unirank.artifact.catalog import HashedVocab, title_key
from unirank.artifact.catalog_file import TextColumn
from unirank.artifact.store import (
    CATALOG,
    CATALOG_JSON,
    MANIFEST,
    MODEL_ONNX,
    MODEL_TORCH,
    OPTIONAL_RETRIEVAL_ARRAYS,
    RETRIEVAL,
    RETRIEVAL_ARRAYS,
    IncompleteArtifact,
    sha256_file,
)


def test_arrays_are_mapped_aligned_and_still_an_npz(tmp_path: Path) -> None:
    arrays = {
        "ints": np.arange(11, dtype=np.int32),
        "matrix": np.random.default_rng(0).random((7, 3)).astype(np.float32),
        "empty": np.zeros((0, 4), dtype=np.int64),
        "text": np.frombuffer("héllo".encode(), dtype=np.uint8),
    }
    write_arrays(tmp_path / "a.npz", arrays)
    mapped = load_arrays(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as plain:  # numpy reads it as any .npz
        for name, value in arrays.items():
            assert mapped[name].dtype == value.dtype and np.array_equal(mapped[name], value), name
            assert np.array_equal(plain[name], value), name
    assert all(a.ctypes.data % ALIGN == 0 for a in mapped.values() if a.size)
    assert not mapped["ints"].flags.writeable  # a map of the verified file, never written through
    np.savez(tmp_path / "old.npz", **arrays)  # an older artifact's unaligned members map too
    np.savez_compressed(tmp_path / "packed.npz", **arrays)  # a compressed member is read
    for name in ("old.npz", "packed.npz"):
        assert all(np.array_equal(load_arrays(tmp_path / name)[k], v) for k, v in arrays.items())


def test_a_member_shorter_than_its_header_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as archive:  # a header promising 1,000 rows
        header = tmp_path / "h.npy"
        np.save(header, np.zeros(1000, dtype=np.int64))
        archive.writestr("x.npy", header.read_bytes()[:200])
    with pytest.raises(ValueError, match="not as long as its header says"):
        load_arrays(tmp_path / "bad.npz")


def test_catalogue_columns_equal_the_catalogue(artifact_dir: Path, tmp_path: Path) -> None:
    catalog = load_artifact(artifact_dir).catalog
    reference = Catalog.from_json(catalog.to_json())  # the JSON path: lists of Python objects
    catalog.save(tmp_path / CATALOG)
    stored = Catalog.load(tmp_path / CATALOG)
    assert stored.to_json() == reference.to_json()
    assert np.array_equal(stored.category_matrix(), reference.category_matrix())
    assert np.array_equal(stored.title_token_matrix(), reference.title_token_matrix())
    assert stored.newest_release_year == reference.newest_release_year
    assert stored._title_keys is not None  # stored, not hashed again at load
    assert np.array_equal(stored.title_keys(), reference.title_keys())
    last = stored.n_items
    assert stored.titles[last] == reference.titles[last] and stored.titles[-1] == reference.titles[-1]
    assert stored.item_categories[last] == reference.item_categories[last]
    assert stored.items.index(reference.items.key(last)) == last


def test_hashed_item_ids_find_what_a_dict_finds(
    artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large catalogue's item ids (HashedVocab: hashes beside the id column, no dict) answer
    every lookup as the dict of a small one does, and repeated or empty ids are refused."""
    catalog = load_artifact(artifact_dir).catalog
    catalog.save(tmp_path / CATALOG)
    monkeypatch.setattr(catalog_module, "HASHED_VOCAB_MIN", 0)
    hashed = Catalog.load(tmp_path / CATALOG).items
    assert isinstance(hashed, HashedVocab)
    plain = catalog.items
    keys = [*plain.keys[1:], "", "no-such-item", plain.key(1).upper(), plain.key(1) + " "]
    keys = [keys[i] for i in np.random.default_rng(0).permutation(len(keys))]
    assert hashed.indices(keys).tolist() == plain.indices(keys).tolist()
    assert hashed.known_indices(keys) == plain.known_indices(keys)
    assert [hashed.index(k) for k in keys] == [plain.index(k) for k in keys]
    assert [k in hashed for k in keys] == [k in plain for k in keys]
    assert hashed.index_ignoring_case(plain.key(3).upper()) == plain.index_ignoring_case(plain.key(3).upper())
    assert len(hashed) == len(plain) and hashed.key(len(plain) - 1) == plain.key(len(plain) - 1)
    for bad in (["", "a", "b", "a"], ["", "a", "", "b"], ["x", "a"]):
        text = "".join(bad)
        starts = np.cumsum([0, *map(len, bad)])
        with pytest.raises(ValueError, match="vocabulary keys"):
            HashedVocab(TextColumn(text, starts))


def test_titles_that_differ_in_case_and_spacing_share_a_key() -> None:
    assert title_key("The  Big\tSleep ") == title_key("the big sleep") != title_key("the big sleepy")


def test_retrieval_indices_are_int32_maps(artifact_dir: Path) -> None:
    retrieval = load_artifact(artifact_dir).retrieval
    for name in ("related_items", "popular_items", "lexical_items", "category_items"):
        assert getattr(retrieval, name).dtype == np.int32, name
        assert not getattr(retrieval, name).flags.writeable, name


def older_format(artifact_dir: Path, out: Path) -> Path:
    """``artifact_dir`` as the format before ``catalog.npz``: ``catalog.json`` and int64 arrays of
    ``np.savez``, the manifest's checksums rewritten."""
    shutil.copytree(artifact_dir, out)
    artifact = load_artifact(out)
    manifest = json.loads((out / MANIFEST).read_text())
    artifact.catalog.save(out / CATALOG_JSON)
    (out / CATALOG).unlink()
    del manifest["files"][CATALOG]
    retrieval = artifact.retrieval
    names = [*RETRIEVAL_ARRAYS, *OPTIONAL_RETRIEVAL_ARRAYS]
    np.savez(out / RETRIEVAL, **{n: np.asarray(getattr(retrieval, n)).astype(np.int64) for n in names[1:]},
             item_embeddings=retrieval.item_embeddings)  # fmt: skip
    for name in (CATALOG_JSON, RETRIEVAL):
        manifest["files"][name] = sha256_file(out / name)
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def test_an_artifact_of_the_older_format_loads_the_same(artifact_dir: Path, tmp_path: Path) -> None:
    old = load_artifact(older_format(artifact_dir, tmp_path / "old"))
    new = load_artifact(artifact_dir)
    assert old.catalog.to_json() == new.catalog.to_json()
    assert old.retrieval.related_items.dtype == np.int64
    assert np.array_equal(old.retrieval.related_items, new.retrieval.related_items)
    with (tmp_path / "old" / CATALOG_JSON).open("a") as handle:  # still checksummed
        handle.write(" ")
    with pytest.raises(ArtifactError, match=f"checksum mismatch for {CATALOG_JSON}"):
        load_artifact(tmp_path / "old")


def test_a_file_the_reader_never_opens_is_not_hashed_but_must_be_there(
    artifact_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact_dir, copy)
    with (copy / MODEL_TORCH).open("ab") as handle:  # what an ONNX Runtime server never reads
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match=f"checksum mismatch for {MODEL_TORCH}"):
        load_artifact(copy)
    assert (
        load_artifact(copy, unread=(MODEL_TORCH,)).model_version == load_artifact(artifact_dir).model_version
    )
    with pytest.raises(ArtifactError, match=f"checksum mismatch for {MODEL_ONNX}"):  # the rest still is
        (copy / MODEL_ONNX).write_bytes((copy / MODEL_ONNX).read_bytes()[:-1])
        load_artifact(copy, unread=(MODEL_TORCH,))
    (copy / MODEL_TORCH).unlink()
    with pytest.raises(IncompleteArtifact, match=f"{MODEL_TORCH} is missing"):
        load_artifact(copy, unread=(MODEL_TORCH,))
