"""MovieLens loaders: every release format from tiny hand-written fixtures, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unirank.training.logs import EventType, LogData
from unirank.training.movielens import MovieLensFormatError, clean_title, detect_format, load_movielens
from unirank.training.sources import DataSpecError, load_logs, parse_data_spec

# The same tiny catalogue in every format: 4 movies, 3 users, 8 ratings, 2 tags (latest only).
LATEST_MOVIES = (
    "movieId,title,genres\r\n"
    "1,Toy Story (1995),Adventure|Animation|Children\r\n"
    '2,"American President, The (1995)",Comedy|Drama|Romance\r\n'
    "3,Heat (1995),Action|Crime|Thriller\r\n"
    "4,Unknown Thing,(no genres listed)\r\n"
)
LATEST_RATINGS = (
    "userId,movieId,rating,timestamp\r\n"
    "1,1,4.0,964982703\r\n"
    "1,3,4.5,964981247\r\n"
    "1,2,3.0,964982224\r\n"
    "2,1,5.0,1445714994\r\n"
    "2,4,2.5,1445714990\r\n"
    "3,3,4.0,1100000000\r\n"
    "3,2,1.0,1100000100\r\n"
    "3,1,3.5,1100000200\r\n"
)
LATEST_TAGS = 'userId,movieId,tag,timestamp\r\n2,1,pixar,1445714995\r\n1,3,"heist, los angeles",964981300\r\n'

ML100K_DATA = "1\t1\t4\t874965758\n1\t2\t3\t876893171\n2\t3\t5\t878542960\n2\t1\t2\t876893119\n"
ML100K_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
    "3|Four Rooms|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
)
ML100K_GENRE = (
    "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\nDocumentary|7\n"
    "Drama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\nRomance|14\nSci-Fi|15\n"
    "Thriller|16\nWar|17\nWestern|18\n\n"
)
ML1M_MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
)
ML1M_RATINGS = "1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n"


def _write(directory: Path, files: dict[str, str], newline: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(
            text, encoding="latin-1" if name.startswith("u.") else "utf-8", newline=newline
        )
    return directory


@pytest.fixture
def latest(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "ml-latest-small",
        {"movies.csv": LATEST_MOVIES, "ratings.csv": LATEST_RATINGS, "tags.csv": LATEST_TAGS},
    )


def _ratings_by_user(log: LogData) -> dict[str, list[tuple[str, float, int]]]:
    out: dict[str, list[tuple[str, float, int]]] = {}
    events = log.events
    for u, i, r, t in zip(
        events.user.tolist(),
        events.item.tolist(),
        events.rating.tolist(),
        events.timestamp_ms.tolist(),
        strict=True,
    ):
        out.setdefault(log.user_ids[u], []).append((log.items.item_ids[i], r, t))
    return out


def test_latest_csv_with_windows_line_endings(latest: Path) -> None:
    assert detect_format(latest) == "csv"
    log = load_movielens(latest)
    assert log.items.item_ids == ["1", "2", "3", "4"]
    assert log.items.titles == ["Toy Story", "The American President", "Heat", "Unknown Thing"]
    assert log.items.release_year.tolist() == [1995, 1995, 1995, 0]
    assert log.items.categories[3] == []  # "(no genres listed)" is no category
    assert "Children" in log.category_ids and "(no genres listed)" not in log.category_ids
    assert (log.events.event_type == EventType.PLAY).all()
    assert len(log.events) == 8 and (np.diff(log.events.timestamp_ms) >= 0).all()
    assert _ratings_by_user(log)["1"] == [
        ("3", 4.5, 964981247000),
        ("2", 3.0, 964982224000),
        ("1", 4.0, 964982703000),
    ]
    assert log.texts.text == ["heist, los angeles", "pixar"]  # sorted by time; quoted commas kept
    assert log.provenance["format"] == "movielens-csv"
    log.validate()


def test_ml_100k_tab_and_pipe_files(tmp_path: Path) -> None:
    root = _write(
        tmp_path / "ml-100k", {"u.data": ML100K_DATA, "u.item": ML100K_ITEM, "u.genre": ML100K_GENRE}
    )
    assert detect_format(root) == "100k"
    log = load_movielens(root)
    assert log.items.titles == ["Toy Story", "GoldenEye", "Four Rooms"]
    assert log.items.release_year.tolist() == [1995, 1995, 1995]  # Four Rooms: from its release date
    assert log.items.categories[0] == ["Animation", "Children's", "Comedy"]
    assert log.items.categories[1] == ["Action", "Adventure", "Thriller"]
    assert _ratings_by_user(log)["2"] == [("1", 2.0, 876893119000), ("3", 5.0, 878542960000)]
    assert len(log.texts) == 0


def test_ml_1m_double_colon_files(tmp_path: Path) -> None:
    root = _write(tmp_path / "ml-1m", {"movies.dat": ML1M_MOVIES, "ratings.dat": ML1M_RATINGS})
    assert detect_format(root) == "dat"
    log = load_movielens(root)
    assert log.items.titles == ["Toy Story", "Jumanji"]
    assert log.items.categories[1] == ["Adventure", "Children's", "Fantasy"]
    assert len(log.events) == 3 and log.n_users == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Matrix, The (1999)", ("The Matrix", 1999)),
        ("Misérables, Les (1995)", ("Les Misérables", 1995)),
        ("Seven (a.k.a. Se7en) (1995)", ("Seven (a.k.a. Se7en)", 1995)),
        ("Babylon 5", ("Babylon 5", 0)),
        ("Fawlty Towers (1975-1979)", ("Fawlty Towers", 1975)),
    ],
)
def test_titles_lose_the_year_and_a_trailing_article(raw: str, expected: tuple[str, int]) -> None:
    assert clean_title(raw) == expected


def test_unknown_directories_are_refused_with_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        MovieLensFormatError, match=r"ratings\.csv \+ movies\.csv.*u\.data.*found \['notes\.txt'\]"
    ):
        detect_format(tmp_path)
    with pytest.raises(MovieLensFormatError, match="no such directory"):
        detect_format(tmp_path / "missing")
    with pytest.raises(DataSpecError, match="not a MovieLens release"):
        load_logs(f"movielens:{tmp_path}")


def test_malformed_files_name_the_line(tmp_path: Path) -> None:
    bad = _write(
        tmp_path / "bad",
        {"movies.csv": LATEST_MOVIES, "ratings.csv": "userId,movieId,rating,timestamp\n1,1,four,5\n"},
    )
    with pytest.raises(MovieLensFormatError, match=r"ratings\.csv line 2: bad number"):
        load_movielens(bad)
    wrong = _write(tmp_path / "wrong", {"movies.csv": LATEST_MOVIES, "ratings.csv": "user,item\n1,1\n"})
    with pytest.raises(MovieLensFormatError, match="header"):
        load_movielens(wrong)
    orphan = _write(
        tmp_path / "orphan",
        {"movies.csv": LATEST_MOVIES, "ratings.csv": "userId,movieId,rating,timestamp\n1,99,4,5\n"},
    )
    with pytest.raises(MovieLensFormatError, match="movie 99"):
        load_movielens(orphan)


def test_data_specs() -> None:
    assert parse_data_spec("movielens:../data/ml-1m").path == "../data/ml-1m"
    assert str(parse_data_spec("logs:/x/y")) == "logs:/x/y"
    with pytest.raises(DataSpecError, match="needs a directory"):
        parse_data_spec("movielens")
    with pytest.raises(DataSpecError, match="unknown --data"):
        parse_data_spec("parquet:/x")
