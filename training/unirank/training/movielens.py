"""MovieLens loaders: each GroupLens release format -> canonical :class:`LogData` (ratings as plays).

The format is detected from the files in the directory:

* ``ratings.csv`` + ``movies.csv`` (+ ``tags.csv``): ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m
* ``u.data`` + ``u.item`` (+ ``u.genre``): ml-100k (tab- and pipe-separated, Latin-1)
* ``ratings.dat`` + ``movies.dat`` (+ ``tags.dat``): ml-1m, ml-10m (``::``-separated, Latin-1)

Every rating becomes a ``play`` event carrying its star rating; tags become user texts; a title's
trailing ``(1995)`` becomes the release year and a trailing article moves to the front
(``"American President, The (1995)"`` -> ``"The American President"``, 1995). MovieLens has no
maturity ratings, so every item is ``all`` (index 0). Windows line endings are accepted anywhere.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from unirank.training.logs import EventTable, EventType, ItemTable, LogData, TextTable

FORMATS: dict[str, tuple[str, ...]] = {
    "csv": ("ratings.csv", "movies.csv"),
    "100k": ("u.data", "u.item"),
    "dat": ("ratings.dat", "movies.dat"),
}
"""format name -> the files that identify it (checked in this order)."""

NO_GENRE = {"(no genres listed)", "unknown"}
_YEAR = re.compile(r"\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>The|A|An|Les|La|Le|L'|Il|Das|Der|Die|El|Los|Las)$")


class MovieLensFormatError(ValueError):
    """The directory is not a MovieLens release this loader knows, or a file is malformed."""


def detect_format(path: Path) -> str:
    """``csv``, ``100k`` or ``dat``; raises :class:`MovieLensFormatError` naming what it looked for."""
    if not path.exists():
        raise MovieLensFormatError(f"movielens:{path}: no such directory")
    if not path.is_dir():
        raise MovieLensFormatError(f"movielens:{path}: pass the directory that holds the MovieLens files")
    for name, files in FORMATS.items():
        if all((path / f).is_file() for f in files):
            return name
    found = sorted(p.name for p in path.iterdir())[:12]
    expected = "; ".join(" + ".join(files) for files in FORMATS.values())
    raise MovieLensFormatError(
        f"movielens:{path}: not a MovieLens release this version reads; expected one of: {expected} "
        f"(ml-latest/25m, ml-100k, ml-1m/10m); found {found}"
    )


def clean_title(raw: str) -> tuple[str, int]:
    """(display title, release year or 0) from a MovieLens title such as ``"Matrix, The (1999)"``."""
    title = raw.strip()
    year = 0
    match = _YEAR.search(title)
    if match:
        year = int(match.group(1))
        title = title[: match.start()].strip()
    article = _ARTICLE.match(title)
    if article:
        title = f"{article.group('article')} {article.group('rest')}"
    return title, year


def load_movielens(path: str | Path) -> LogData:
    """Canonical logs from a MovieLens directory of any supported format."""
    root = Path(path)
    kind = detect_format(root)
    if kind == "csv":
        log = _load_csv(root)
    elif kind == "100k":
        log = _load_100k(root)
    else:
        log = _load_dat(root)
    log.provenance.update({"path": str(path), "format": f"movielens-{kind}"})
    log.validate()
    return log


# --- shared assembly -------------------------------------------------------------------------


def _lines(path: Path, encoding: str) -> Iterator[str]:
    """Lines without their ending (``\\n`` or ``\\r\\n``), blank lines skipped."""
    with path.open("r", encoding=encoding, newline="") as handle:
        for line in handle:
            line = line.rstrip("\r\n")
            if line.strip():
                yield line


def _assemble(
    movies: list[tuple[str, str, list[str]]],
    ratings: Iterable[tuple[str, str, float, int]],
    tags: Iterable[tuple[str, str, str, int]],
) -> LogData:
    """LogData from (movie, raw title, genres), (user, movie, stars, unix s), (user, movie, tag, unix s)."""
    item_ids: list[str] = []
    titles: list[str] = []
    years: list[int] = []
    genres: list[list[str]] = []
    index: dict[str, int] = {}
    for movie_id, raw_title, movie_genres in movies:
        if movie_id in index:
            raise MovieLensFormatError(f"movie id {movie_id} is listed twice")
        index[movie_id] = len(item_ids)
        title, year = clean_title(raw_title)
        item_ids.append(movie_id)
        titles.append(title)
        years.append(year)
        genres.append([g for g in movie_genres if g and g not in NO_GENRE])
    users: dict[str, int] = {}
    user_col: list[int] = []
    item_col: list[int] = []
    stars: list[float] = []
    times: list[int] = []
    for user_id, movie_id, rating, seconds in ratings:
        if movie_id not in index:
            raise MovieLensFormatError(f"a rating refers to movie {movie_id}, which the movies file lacks")
        user_col.append(users.setdefault(user_id, len(users)))
        item_col.append(index[movie_id])
        stars.append(rating)
        times.append(seconds * 1000)
    text_user: list[int] = []
    text_item: list[int] = []
    text: list[str] = []
    text_time: list[int] = []
    for user_id, movie_id, tag, seconds in tags:
        if movie_id not in index or not tag.strip():
            continue  # a tag on a movie the release dropped says nothing we can use
        text_user.append(users.setdefault(user_id, len(users)))
        text_item.append(index[movie_id])
        text.append(tag.strip())
        text_time.append(seconds * 1000)
    events = EventTable.build(
        user=np.asarray(user_col, dtype=np.int64),
        item=np.asarray(item_col, dtype=np.int64),
        timestamp_ms=np.asarray(times, dtype=np.int64),
        event_type=EventType.PLAY,
        rating=np.asarray(stars, dtype=np.float64),
    ).sorted()
    texts = TextTable(
        user=np.asarray(text_user, dtype=np.int64),
        item=np.asarray(text_item, dtype=np.int64),
        text=text,
        timestamp_ms=np.asarray(text_time, dtype=np.int64),
    )
    texts = texts.take(np.argsort(texts.timestamp_ms, kind="stable"))
    n_items = len(item_ids)
    return LogData(
        items=ItemTable(
            item_ids=item_ids,
            titles=titles,
            categories=genres,
            maturity=np.zeros(n_items, dtype=np.int64),
            release_year=np.asarray(years, dtype=np.int64),
        ),
        user_ids=list(users),
        category_ids=sorted({g for gs in genres for g in gs}),
        events=events,
        source="movielens",
        texts=texts,
    )


def _field_error(path: Path, line_number: int, line: str, why: str) -> MovieLensFormatError:
    return MovieLensFormatError(f"{path.name} line {line_number}: {why}: {line[:80]!r}")


# --- ml-latest / ml-25m: CSV with a header --------------------------------------------------


def _csv_rows(path: Path, header: list[str]) -> Iterator[tuple[int, list[str]]]:
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        found = [h.strip() for h in next(reader, [])]
        if found != header:
            raise MovieLensFormatError(f"{path.name}: header {found}, expected {header}")
        for number, row in enumerate(reader, start=2):
            if row:
                if len(row) != len(header):
                    raise _field_error(
                        path, number, ",".join(row), f"{len(row)} fields, expected {len(header)}"
                    )
                yield number, [value.strip() for value in row]


def _ratings_csv(path: Path) -> Iterator[tuple[str, str, float, int]]:
    for number, (user, movie, rating, seconds) in _csv_rows(
        path, ["userId", "movieId", "rating", "timestamp"]
    ):
        try:
            yield user, movie, float(rating), int(seconds)
        except ValueError:
            raise _field_error(path, number, f"{user},{movie},{rating},{seconds}", "bad number") from None


def _load_csv(root: Path) -> LogData:
    movies = [
        (movie, title, genres.split("|"))
        for _, (movie, title, genres) in _csv_rows(root / "movies.csv", ["movieId", "title", "genres"])
    ]
    tags: Iterable[tuple[str, str, str, int]] = ()
    if (root / "tags.csv").is_file():
        tags = [
            (user, movie, tag, int(seconds))
            for _, (user, movie, tag, seconds) in _csv_rows(
                root / "tags.csv", ["userId", "movieId", "tag", "timestamp"]
            )
        ]
    return _assemble(movies, _ratings_csv(root / "ratings.csv"), tags)


# --- ml-100k ---------------------------------------------------------------------------------

# u.genre lists the 19 genre flags of u.item in order; this is its content, for releases without it.
_GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def _load_100k(root: Path) -> LogData:
    genre_names = list(_GENRES_100K)
    if (root / "u.genre").is_file():
        pairs = [line.split("|") for line in _lines(root / "u.genre", "latin-1")]
        by_index = {int(i): name for name, i in pairs if i.strip().isdigit()}
        genre_names = [by_index[i] for i in sorted(by_index)]
    movies = []
    for number, line in enumerate(_lines(root / "u.item", "latin-1"), start=1):
        fields = line.split("|")
        if len(fields) != 5 + len(genre_names):
            raise _field_error(
                root / "u.item", number, line, f"{len(fields)} fields, expected {5 + len(genre_names)}"
            )
        flags = fields[5:]
        movie_genres = [name for name, flag in zip(genre_names, flags, strict=True) if flag.strip() == "1"]
        title = fields[1]
        if not _YEAR.search(title) and fields[2].strip()[-4:].isdigit():
            title = f"{title} ({fields[2].strip()[-4:]})"  # the release date knows the year
        movies.append((fields[0].strip(), title, movie_genres))

    def ratings() -> Iterator[tuple[str, str, float, int]]:
        for number, line in enumerate(_lines(root / "u.data", "latin-1"), start=1):
            fields = line.split("\t")
            if len(fields) != 4:
                raise _field_error(root / "u.data", number, line, "expected 4 tab-separated fields")
            try:
                yield fields[0].strip(), fields[1].strip(), float(fields[2]), int(fields[3])
            except ValueError:
                raise _field_error(root / "u.data", number, line, "bad number") from None

    return _assemble(movies, ratings(), ())


# --- ml-1m / ml-10m: '::'-separated ------------------------------------------------------------


def _dat_rows(path: Path, n_fields: int) -> Iterator[tuple[int, list[str]]]:
    for number, line in enumerate(_lines(path, "latin-1"), start=1):
        fields = line.split("::")
        if len(fields) != n_fields:
            raise _field_error(path, number, line, f"expected {n_fields} '::'-separated fields")
        yield number, fields


def _load_dat(root: Path) -> LogData:
    movies = [
        (movie.strip(), title, genres.split("|"))
        for _, (movie, title, genres) in _dat_rows(root / "movies.dat", 3)
    ]

    def ratings() -> Iterator[tuple[str, str, float, int]]:
        for number, (user, movie, rating, seconds) in _dat_rows(root / "ratings.dat", 4):
            try:
                yield user.strip(), movie.strip(), float(rating), int(seconds)
            except ValueError:
                raise _field_error(
                    root / "ratings.dat", number, "::".join((user, movie, rating)), "bad number"
                ) from None

    tags: list[tuple[str, str, str, int]] = []
    if (root / "tags.dat").is_file():  # ml-10m
        tags = [
            (user.strip(), movie.strip(), tag, int(seconds))
            for _, (user, movie, tag, seconds) in _dat_rows(root / "tags.dat", 4)
        ]
    return _assemble(movies, ratings(), tags)
