"""The item catalogue and the vocabularies that turn external ids into model indices.

Index 0 of every vocabulary and of every per-item array is the padding / missing slot, so a
model input of 0 always means "absent".
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from unirank.artifact.catalog_file import TextColumn, load_columns, save_columns
from unirank.artifact.text import tokenize

MATURITY_LEVELS: tuple[str, ...] = ("all", "7+", "13+", "16+", "18+")
"""Maturity ratings, least to most restricted; an item stores the index into this tuple."""

NEW_RELEASE_YEARS = 3
"""Default width in years of the new-release window (the ``new_releases`` use-case): training
labels and offline evaluation use it, and the server when a request leaves ``window_years`` at 0."""

_MS_RANGE = (-62_135_596_800_000, 253_402_300_799_999)  # years 1..9999: what datetime64[Y] shows


def calendar_year(time_ms: np.ndarray | int) -> np.ndarray:
    """The UTC calendar year of Unix-millisecond times (clipped to years 1..9999)."""
    ms = np.clip(np.asarray(time_ms, dtype=np.int64), *_MS_RANGE)
    return ms.astype("datetime64[ms]").astype("datetime64[Y]").astype(np.int64) + 1970


def new_release_years(
    time_ms: np.ndarray | int, newest_year: int, window_years: int = NEW_RELEASE_YEARS
) -> tuple[np.ndarray, np.ndarray]:
    """The release years ``(first, last)``, both inclusive, that count as new at ``time_ms``.

    The window is ``window_years`` wide and ends at the year of ``time_ms``, or at the catalogue's
    ``newest_year`` when that is earlier (a catalogue exported years ago still has new releases,
    and an item is never new before its release year). One definition for training labels,
    offline evaluation and serving, so "new" cannot mean different things in each.
    """
    if window_years < 1:
        raise ValueError(f"window_years must be >= 1, got {window_years}")
    last = np.minimum(calendar_year(time_ms), newest_year)
    return last - (window_years - 1), last


def is_new_release(
    release_year: np.ndarray,
    time_ms: np.ndarray | int,
    newest_year: int,
    window_years: int = NEW_RELEASE_YEARS,
) -> np.ndarray:
    """bool, broadcasting ``release_year`` against ``time_ms``: new at that time (unknown year 0: never)."""
    first, last = new_release_years(time_ms, newest_year, window_years)
    year = np.asarray(release_year)
    return (year > 0) & (year >= first) & (year <= last)


def title_key(title: str) -> int:
    """An id of the title's normalised form (lower case, each run of whitespace one space): titles
    that differ only so share it (the ``dedupe_titles`` rule). 64 bits of blake2b, so a million
    titles do not share one by chance (32-bit CRCs would, about a hundred pairs)."""
    digest = hashlib.blake2b(" ".join(title.lower().split()).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class Vocab:
    """An ordered set of string keys with index 0 reserved for missing."""

    def __init__(self, keys: Iterable[str]) -> None:
        ordered = [""]
        self._index: dict[str, int] = {}
        self._folded: dict[str, int] | None = None
        for key in keys:
            if key and key not in self._index:
                self._index[key] = len(ordered)
                ordered.append(key)
        self.keys: Sequence[str] = ordered

    @classmethod
    def of_unique(cls, keys: list[str]) -> Vocab:
        """The vocabulary whose keys are ``keys`` (``keys[0]`` the reserved ""), each distinct and
        non-empty (else ValueError): one dict built at C speed, for a stored catalogue's items."""
        vocab = cls(())
        index = dict(zip(keys[1:], range(1, len(keys)), strict=True))
        if not keys or keys[0] != "" or len(index) != len(keys) - 1 or "" in index:
            raise ValueError("vocabulary keys must be distinct and non-empty after the reserved first")
        vocab.keys, vocab._index = keys, index
        return vocab

    def __len__(self) -> int:
        """Number of slots including the reserved 0."""
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def index(self, key: str) -> int:
        """The index of ``key``, 0 when unknown."""
        return self._index.get(key, 0)

    def indices(self, keys: Sequence[str]) -> np.ndarray:
        """int64 indices of ``keys`` (0 where unknown), looked up in one C-level loop."""
        return np.fromiter(map(self._index.get, keys, repeat(0)), dtype=np.int64, count=len(keys))

    def known_indices(self, keys: Iterable[str]) -> list[int]:
        """Indices of the known ``keys``, in order (unknown ones dropped)."""
        return list(filter(None, map(self._index.get, keys, repeat(0))))

    def key(self, index: int) -> str:
        return self.keys[index]

    def index_ignoring_case(self, key: str) -> int:
        """The index of ``key``, else of the one key equal to it ignoring case; 0 when unknown or
        when several keys differ only in case (``comedy`` finds ``Comedy``)."""
        found = self.index(key)
        if found or not key:
            return found
        folded = self._folded
        if folded is None:  # built on first use: only vocabularies looked up this way pay for it
            counts = Counter(k.casefold() for i, k in enumerate(self.keys) if i)
            folded = {k.casefold(): i for i, k in enumerate(self.keys) if i and counts[k.casefold()] == 1}
            self._folded = folded
        return folded.get(key.casefold(), 0)

    def closest(self, key: str, n: int = 3) -> list[str]:
        """Up to ``n`` known keys that look like ``key`` (for "did you mean" hints)."""
        return difflib.get_close_matches(key, self.keys[1:], n=n, cutoff=0.6)


HASHED_VOCAB_MIN = 100_000
"""From this many items a stored catalogue finds item ids by hash (:class:`HashedVocab`) instead
of a dict: about 110 MB less at a million items, a few µs more per request that names 200 ids."""


class HashedVocab(Vocab):
    """A large stored catalogue's item ids: the ids stay in their column (one text) and are found
    by their hashes, sorted beside the index of each: 12 bytes an item, where a dict of str keys and
    int values takes about 120. A lookup is a binary search and one comparison of the id."""

    def __init__(self, keys: TextColumn) -> None:
        """``keys[0]`` is the reserved ""; the others distinct and non-empty (else ValueError)."""
        hashes = np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))
        order = np.argsort(hashes, kind="stable")
        self.keys = keys
        self._folded = None
        self._hashes = hashes[order]
        self._order = order.astype(np.int32)
        self._column = keys
        if not len(keys) or keys[0] != "":
            raise ValueError("vocabulary keys must start with the reserved empty key")
        # Repeats, and empty keys (of the reserved key's hash), can only be where hashes are equal.
        same = np.flatnonzero(self._hashes[1:] == self._hashes[:-1])
        empty = np.flatnonzero(self._hashes == hash(""))
        suspects = np.unique(np.concatenate([self._order[same], self._order[same + 1], self._order[empty]]))
        texts = keys.rows(suspects)  # suspects[0] is the reserved 0
        if "" in texts[1:] or len(set(texts)) != len(texts):
            raise ValueError("vocabulary keys must be distinct and non-empty after the reserved first")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.index(key) > 0

    def index(self, key: str) -> int:
        """The index of ``key``, 0 when unknown."""
        hashes, wanted = self._hashes, hash(key)
        at = int(hashes.searchsorted(wanted))
        while at < len(hashes) and hashes[at] == wanted:
            found = int(self._order[at])
            if found and self.keys[found] == key:
                return found
            at += 1
        return 0

    def indices(self, keys: Sequence[str]) -> np.ndarray:
        """int64 indices of ``keys`` (0 where unknown): one binary search for them all."""
        wanted = np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))
        at = np.minimum(np.searchsorted(self._hashes, wanted), len(self._hashes) - 1)
        found = np.where(self._hashes[at] == wanted, self._order[at], 0).astype(np.int64)
        stored = self._column.rows(found)
        for i, (key, text, index) in enumerate(zip(keys, stored, found.tolist(), strict=True)):
            if index and key != text:  # another id of the same hash (or an earlier one of it)
                found[i] = self.index(key)
        return found

    def known_indices(self, keys: Iterable[str]) -> list[int]:
        """Indices of the known ``keys``, in order (unknown ones dropped)."""
        return [i for i in self.indices(list(keys)).tolist() if i]


@dataclass
class Catalog:
    """Items with their content, plus the user / token / category vocabularies.

    Per-item lists are aligned with ``items.keys`` (position 0 is the padding item).
    """

    items: Vocab
    titles: Sequence[str]
    item_categories: Sequence[list[str]]
    maturity: Sequence[int] | np.ndarray
    release_year: Sequence[int] | np.ndarray
    popularity: Sequence[float] | np.ndarray
    users: Vocab
    tokens: Vocab
    categories: Vocab
    max_title_tokens: int = 8
    max_item_categories: int = 4
    _title_tokens: np.ndarray | None = field(default=None, repr=False)
    _category_matrix: np.ndarray | None = field(default=None, repr=False)
    _category_index: tuple[np.ndarray, np.ndarray, list[str]] | None = field(default=None, repr=False)
    """A stored catalogue's item categories as (indptr, index into names, names): a CSR."""
    _title_keys: np.ndarray | None = field(default=None, repr=False)
    """A stored catalogue's :meth:`title_keys`."""

    @classmethod
    def build(
        cls,
        item_ids: Sequence[str],
        titles: Sequence[str],
        item_categories: Sequence[Sequence[str]],
        maturity: Sequence[int],
        release_year: Sequence[int],
        popularity: Sequence[float],
        user_ids: Iterable[str],
        extra_tokens: Iterable[str] = (),
        max_title_tokens: int = 8,
        max_item_categories: int = 4,
    ) -> Catalog:
        """A catalogue from per-item columns (no padding row; it is added here)."""
        n = len(item_ids)
        for name, column in (
            ("titles", titles),
            ("item_categories", item_categories),
            ("maturity", maturity),
            ("release_year", release_year),
            ("popularity", popularity),
        ):
            if len(column) != n:
                raise ValueError(f"{name} has {len(column)} rows, item_ids has {n}")
        items = Vocab(item_ids)
        if len(items) != n + 1:
            raise ValueError("item_ids must be unique and non-empty")
        token_keys: list[str] = []
        for title in titles:
            token_keys.extend(tokenize(title))
        token_keys.extend(extra_tokens)
        categories = Vocab(sorted({c for cats in item_categories for c in cats}))
        return cls(
            items=items,
            titles=["", *titles],
            item_categories=[[], *[list(c) for c in item_categories]],
            maturity=[0, *[int(m) for m in maturity]],
            release_year=[0, *[int(y) for y in release_year]],
            popularity=[0.0, *[float(p) for p in popularity]],
            users=Vocab(user_ids),
            tokens=Vocab(token_keys),
            categories=categories,
            max_title_tokens=max_title_tokens,
            max_item_categories=max_item_categories,
        )

    @property
    def n_items(self) -> int:
        """Number of real items (the padding slot excluded)."""
        return len(self.items) - 1

    @property
    def newest_release_year(self) -> int:
        """The latest known release year of the catalogue (0 when no year is known)."""
        return int(np.max(np.asarray(self.release_year)))

    def title_token_matrix(self) -> np.ndarray:
        """int64 [n_items + 1, max_title_tokens]: token indices of each title, 0-padded."""
        if self._title_tokens is None:
            out = np.zeros((len(self.items), self.max_title_tokens), dtype=np.int64)
            for i, title in enumerate(self.titles):
                ids = [self.tokens.index(t) for t in tokenize(title)]
                ids = [t for t in ids if t][: self.max_title_tokens]
                out[i, : len(ids)] = ids
            self._title_tokens = out
        return self._title_tokens

    def category_matrix(self) -> np.ndarray:
        """int64 [n_items + 1, max_item_categories]: category indices of each item, 0-padded."""
        if self._category_matrix is None and self._category_index is not None:
            self._category_matrix = self._category_matrix_of_index(*self._category_index)
        if self._category_matrix is None:
            out = np.zeros((len(self.items), self.max_item_categories), dtype=np.int64)
            for i, cats in enumerate(self.item_categories):
                ids = [self.categories.index(c) for c in cats][: self.max_item_categories]
                out[i, : len(ids)] = ids
            self._category_matrix = out
        return self._category_matrix

    def _category_matrix_of_index(
        self, indptr: np.ndarray, index: np.ndarray, names: list[str]
    ) -> np.ndarray:
        bounds = np.asarray(indptr, dtype=np.int64)
        rows = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
        position = np.arange(len(index)) - bounds[rows]
        keep = position < self.max_item_categories
        out = np.zeros((len(self.items), self.max_item_categories), dtype=np.int64)
        lookup = np.fromiter(map(self.categories.index, names), dtype=np.int64, count=len(names))
        out[rows[keep], position[keep]] = lookup[np.asarray(index, dtype=np.int64)[keep]]
        return out

    def title_keys(self) -> np.ndarray:
        """int64 [n_items + 1]: :func:`title_key` of each title (``catalog.npz`` stores them, so a
        server of a million items does not hash every title at start-up)."""
        if self._title_keys is None:
            keys = np.fromiter(map(title_key, self.titles), dtype=np.int64, count=len(self.titles))
            self._title_keys = keys
        return self._title_keys

    def primary_category(self, item_index: int) -> str:
        cats = self.item_categories[item_index]
        return cats[0] if cats else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "items": self.items.keys[1:],
            "titles": list(self.titles[1:]),
            "item_categories": [list(c) for c in self.item_categories[1:]],
            "maturity": [int(m) for m in self.maturity[1:]],
            "release_year": [int(y) for y in self.release_year[1:]],
            "popularity": [float(p) for p in self.popularity[1:]],
            "users": self.users.keys[1:],
            "tokens": self.tokens.keys[1:],
            "categories": self.categories.keys[1:],
            "max_title_tokens": self.max_title_tokens,
            "max_item_categories": self.max_item_categories,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Catalog:
        catalog = cls.build(
            item_ids=data["items"],
            titles=data["titles"],
            item_categories=data["item_categories"],
            maturity=data["maturity"],
            release_year=data["release_year"],
            popularity=data["popularity"],
            user_ids=data["users"],
            max_title_tokens=int(data["max_title_tokens"]),
            max_item_categories=int(data["max_item_categories"]),
        )
        # The stored token order is authoritative: rebuild it exactly.
        catalog.tokens = Vocab(data["tokens"])
        catalog.categories = Vocab(data["categories"])
        return catalog

    def save(self, path: Path) -> None:
        """``catalog.npz`` (columns of arrays, :mod:`unirank.artifact.catalog_file`), or JSON for a
        path ending in ``.json``."""
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_json(), separators=(",", ":")))
        else:
            save_columns(self, path)

    @classmethod
    def load(cls, path: Path) -> Catalog:
        """A catalogue saved by :meth:`save`: the columns of ``catalog.npz`` are read as arrays and
        one text per string column, not built into an object per item."""
        if path.suffix == ".json":
            return cls.from_json(json.loads(path.read_text()))
        fields = load_columns(path)
        return cls(
            items=(
                HashedVocab(item_ids)
                if len(item_ids := fields["item_ids"]) > HASHED_VOCAB_MIN
                else Vocab.of_unique(list(item_ids))
            ),
            titles=fields["titles"],
            item_categories=fields["item_categories"],
            maturity=fields["maturity"],
            release_year=fields["release_year"],
            popularity=fields["popularity"],
            users=Vocab(fields["users"]),
            tokens=Vocab(fields["tokens"]),
            categories=Vocab(fields["categories"]),
            max_title_tokens=fields["max_title_tokens"],
            max_item_categories=fields["max_item_categories"],
            _category_index=fields["category_index"],
            _title_keys=fields["title_keys"],
        )
