"""The catalogue as columns of arrays (``catalog.npz``): what a server loads in a fraction of a
second at a million items, where ``catalog.json`` built a Python object per item and per title
(about 0.5 s per 30,000 items, and hundreds of MB).

Strings are stored as one UTF-8 text per column plus each string's start in it (in characters);
an item's categories as a CSR over the names of every category an item has. Artifacts written
before this file keep their ``catalog.json``, which :meth:`Catalog.load` still reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from unirank.artifact.arrays import load_arrays, write_arrays

FORMAT = 1
STRING_COLUMNS = ("items", "titles", "users", "tokens", "categories", "category_names")
T = TypeVar("T")


class _Rows(Sequence[T]):
    """Rows ``0 .. len - 1`` read from a CSR (``bounds[i]:bounds[i + 1]``) by :meth:`_row`."""

    def __init__(self, bounds: np.ndarray) -> None:
        self._bounds = bounds  # a map of the file: no Python int per row

    def _row(self, start: int, end: int) -> T:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._bounds) - 1

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._row(int(self._bounds[index]), int(self._bounds[index + 1]))

    def __iter__(self) -> Iterator[T]:
        return (self._row(a, b) for a, b in pairwise(self._bounds.tolist()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class TextColumn(_Rows[str]):
    """Strings read from one text: ``text[starts[i]:starts[i + 1]]`` is string ``i``."""

    def __init__(self, text: str, starts: np.ndarray) -> None:
        super().__init__(starts)
        self._text = text

    def _row(self, start: int, end: int) -> str:
        return self._text[start:end]

    def rows(self, indices: np.ndarray) -> list[str]:
        """Strings ``indices`` (in range), with one Python call for them all."""
        text, bounds = self._text, self._bounds
        return [
            text[a:b] for a, b in zip(bounds[indices].tolist(), bounds[indices + 1].tolist(), strict=True)
        ]


class CategoryLists(_Rows[list[str]]):
    """Each item's category names, read from a CSR over a table of names."""

    def __init__(self, indptr: np.ndarray, index: np.ndarray, names: Sequence[str]) -> None:
        super().__init__(indptr)
        self._index = index
        self._names = names

    def _row(self, start: int, end: int) -> list[str]:
        names = self._names
        return [names[j] for j in self._index[start:end].tolist()]


def _strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    starts = np.zeros(len(values) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([len(v) for v in values], dtype=np.int64)
    return np.frombuffer("".join(values).encode(), dtype=np.uint8), starts


def _read_strings(arrays: dict[str, np.ndarray], name: str) -> TextColumn:
    text = arrays[f"{name}_text"].tobytes().decode()
    starts = np.asarray(arrays[f"{name}_starts"])
    if not len(starts) or starts[0] != 0 or starts[-1] != len(text) or bool((np.diff(starts) < 0).any()):
        raise ValueError(f"catalogue column {name}: string starts do not fit its text")
    return TextColumn(text, starts)


def catalog_arrays(catalog: Any) -> dict[str, np.ndarray]:
    """The columns of ``catalog`` (a :class:`unirank.artifact.catalog.Catalog`), padding row included."""
    names = sorted({c for cats in catalog.item_categories for c in cats})
    position = {name: i for i, name in enumerate(names)}
    lists = [[position[c] for c in cats] for cats in catalog.item_categories]
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(cats) for cats in lists], dtype=np.int64)
    arrays: dict[str, np.ndarray] = {
        "format": np.array([FORMAT], dtype=np.int64),
        "limits": np.array([catalog.max_title_tokens, catalog.max_item_categories], dtype=np.int64),
        "maturity": np.asarray(catalog.maturity, dtype=np.int8),
        "release_year": np.asarray(catalog.release_year, dtype=np.int32),
        "popularity": np.asarray(catalog.popularity, dtype=np.float64),
        "item_category_indptr": indptr,
        "item_category_index": np.fromiter((j for cats in lists for j in cats), np.int32, int(indptr[-1])),
        "title_keys": catalog.title_keys(),
    }
    columns = {
        "items": catalog.items.keys,
        "titles": catalog.titles,
        "users": catalog.users.keys,
        "tokens": catalog.tokens.keys,
        "categories": catalog.categories.keys,
        "category_names": names,
    }
    for name, values in columns.items():
        arrays[f"{name}_text"], arrays[f"{name}_starts"] = _strings(list(values))
    return arrays


def save_columns(catalog: Any, path: Path) -> None:
    write_arrays(path, catalog_arrays(catalog))


def load_columns(path: Path) -> dict[str, Any]:
    """The catalogue's fields from ``catalog.npz`` (padding row included), for :class:`Catalog`."""
    arrays = load_arrays(path)
    if int(arrays["format"][0]) != FORMAT:
        raise ValueError(f"{path}: catalogue format {int(arrays['format'][0])}, expected {FORMAT}")
    strings = {name: _read_strings(arrays, name) for name in STRING_COLUMNS}
    n = len(strings["items"])
    indptr = np.asarray(arrays["item_category_indptr"])
    index = np.asarray(arrays["item_category_index"])
    names = list(strings["category_names"])
    if (
        len(indptr) != n + 1
        or indptr[0] != 0
        or indptr[-1] != len(index)
        or bool((np.diff(indptr) < 0).any())
    ):
        raise ValueError(f"{path}: item categories do not fit the items")
    if len(index) and not 0 <= int(index.min()) <= int(index.max()) < len(names):
        raise ValueError(f"{path}: an item category is outside the category names")
    columns = {name: np.asarray(arrays[name]) for name in ("maturity", "release_year", "popularity")}
    sized: list[tuple[str, Sized]] = [("titles", strings["titles"]), *columns.items()]
    if "title_keys" in arrays:
        sized.append(("title_keys", arrays["title_keys"]))
    for name, column in sized:
        if len(column) != n:
            raise ValueError(f"{path}: {name} has {len(column)} rows, the items {n}")
    limits = arrays["limits"].tolist()
    return {
        "item_ids": strings["items"],
        "titles": strings["titles"],
        "item_categories": CategoryLists(indptr, index, names),
        "category_index": (indptr, index, names),
        "title_keys": np.asarray(arrays["title_keys"]) if "title_keys" in arrays else None,
        **columns,
        "users": list(strings["users"]),
        "tokens": list(strings["tokens"]),
        "categories": list(strings["categories"]),
        "max_title_tokens": int(limits[0]),
        "max_item_categories": int(limits[1]),
    }
