"""Loaders for the official MovieLens 100K and 1M files, as distributed by GroupLens.

ML-100K: u.data (tab-separated), u.item / u.user / u.genre ('|'-separated; u.item is latin-1).
ML-1M: ratings.dat / movies.dat / users.dat, '::'-separated, latin-1.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.dataset import INTERACTION_COLUMNS, ITEM_COLUMNS, Dataset
from recsys.data.errors import DataError
from recsys.data.tabular import drop_duplicate_pairs, to_float, to_int_ids, to_nullable_int, year_from_title

ML100K_FILES = {"u.data": "the ratings", "u.item": "the movies", "u.user": "the users", "u.genre": "the genres"}
ML1M_FILES = {"ratings.dat": "the ratings", "movies.dat": "the movies", "users.dat": "the users"}
_ML100K_N_GENRES = 19
_ENCODING = "latin-1"  # u.item and movies.dat carry ISO-8859-1 titles such as "Misérables, Les (1995)"
# ML-1M users.dat stores occupations as codes; names from the ML-1M README, so both datasets carry text.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)
USER_COLUMNS = ("user_id", "age", "gender", "occupation", "zip_code")


def _require(folder: Path, name: str, files: dict[str, str], dataset: str) -> Path:
    """The path of `name` in `folder`, or a DataError saying what the folder lacks and what it has."""
    path = Path(folder) / name
    if path.is_file():
        return path
    if Path(folder).is_dir():
        has = ", ".join(sorted(p.name for p in Path(folder).iterdir())) or "(empty)"
    else:
        has = "(folder does not exist)"
    raise DataError(f"{dataset} folder {folder} lacks {name} ({files[name]}); it has: {has}", path=path)


def _read_separated(source: Path | io.BytesIO, path: Path, sep: str, names: list[str],
                    encoding: str = "ascii", text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a header-less separated file; a wrong field count becomes a DataError naming the file."""
    dtype = dict.fromkeys(text_columns, str)
    try:
        return pd.read_csv(source, sep=sep, header=None, names=names, encoding=encoding, dtype=dtype,
                           quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot parse {path.name}: {exc}", path=path) from None


def _ratings_frame(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    """user, item, rating, timestamp columns validated into the interactions contract."""
    out = pd.DataFrame({
        "user_id": to_int_ids(raw["user_id"], path, "user_id"),
        "item_id": to_int_ids(raw["item_id"], path, "item_id"),
        "rating": to_float(raw["rating"], path, "rating"),
        "timestamp": to_nullable_int(raw["timestamp"], path, "timestamp").to_numpy(),
    })
    out["timestamp"] = out["timestamp"].astype("Int64")
    return drop_duplicate_pairs(out, path)[list(INTERACTION_COLUMNS)]


def _check_rows(df: pd.DataFrame, path: Path) -> None:
    if len(df) == 0:
        raise DataError(f"{path.name} has no rows", path=path)


# --------------------------------------------------------------------------------------------------- ML-100K


def read_ml100k_ratings(path: Path) -> pd.DataFrame:
    """u.data: user_id, item_id, rating, unix timestamp, tab-separated."""
    path = Path(path)
    raw = _read_separated(path, path, "\t", ["user_id", "item_id", "rating", "timestamp"])
    _check_rows(raw, path)
    return _ratings_frame(raw, path)


def read_ml100k_genres(path: Path) -> list[str]:
    """u.genre: `name|index` lines (a trailing empty line is normal); names ordered by index."""
    path = Path(path)
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding=_ENCODING).splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, index = line.rpartition("|")
        if not sep or not index.strip().isdigit():
            raise DataError(f"u.genre lines must look like 'Action|1', got {line!r}", path=path, row=lineno)
        pairs.append((int(index), name))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(_ML100K_N_GENRES)):
        raise DataError(f"u.genre must list genres 0..{_ML100K_N_GENRES - 1}, got indexes {[i for i, _ in pairs]}",
                        path=path)
    return [name for _, name in pairs]


def read_ml100k_items(path: Path, genres: list[str]) -> pd.DataFrame:
    """u.item: id|title|release date|video release date|IMDb URL|19 genre flags, latin-1.

    year comes from the title's trailing "(YYYY)", else from the release date (e.g. "(1995) (V)" titles).
    genres are the names of the set flags, in u.genre order, '|'-joined.
    """
    path = Path(path)
    flags = [f"g{i}" for i in range(len(genres))]
    names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flags]
    raw = _read_separated(path, path, "|", names, encoding=_ENCODING,
                          text_columns=("title", "release_date", "video_release_date", "imdb_url"))
    _check_rows(raw, path)
    if raw[flags[-1]].isna().any():
        row = int(np.flatnonzero(raw[flags[-1]].isna().to_numpy())[0]) + 1
        raise DataError(f"u.item rows need {len(names)} '|'-separated fields", path=path, row=row)
    matrix = np.stack([to_int_ids(raw[f], path, f"genre flag {g}") for f, g in zip(flags, genres, strict=True)],
                      axis=1)
    if not np.isin(matrix, (0, 1)).all():
        row = int(np.flatnonzero(~np.isin(matrix, (0, 1)).all(axis=1))[0]) + 1
        raise DataError("u.item genre flags must be 0 or 1", path=path, row=row)
    title = raw["title"].fillna("").astype(str)
    year = year_from_title(title)
    release_year = pd.to_datetime(raw["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    year = year.fillna(release_year.astype("Int64")).astype("Int64")
    names_arr = np.asarray(genres, dtype=object)
    genre_str = ["|".join(names_arr[row.astype(bool)]) for row in matrix]
    items = pd.DataFrame({
        "item_id": to_int_ids(raw["item_id"], path, "item_id"),
        "title": title.to_numpy(dtype=object),
        "year": year.to_numpy(),
        "genres": np.asarray(genre_str, dtype=object),
        "description": np.full(len(raw), "", dtype=object),
    })
    items["year"] = items["year"].astype("Int64")
    return drop_duplicate_pairs(items, path, keys=("item_id",), what="item_id")[list(ITEM_COLUMNS)]


def read_ml100k_users(path: Path) -> pd.DataFrame:
    """u.user: user_id|age|gender|occupation|zip_code (zip codes stay text: some are Canadian)."""
    path = Path(path)
    raw = _read_separated(path, path, "|", ["user_id", "age", "gender", "occupation", "zip_code"],
                          text_columns=("gender", "occupation", "zip_code"))
    _check_rows(raw, path)
    raw["user_id"] = to_int_ids(raw["user_id"], path, "user_id")
    raw["age"] = to_nullable_int(raw["age"], path, "age")
    return raw[list(USER_COLUMNS)]


def load_ml100k(folder: Path) -> Dataset:
    """Load MovieLens 100K from a folder holding u.data, u.item, u.user and u.genre."""
    folder = Path(folder)
    paths = {name: _require(folder, name, ML100K_FILES, "ml-100k") for name in ML100K_FILES}
    genres = read_ml100k_genres(paths["u.genre"])
    return Dataset(
        name="ml-100k",
        interactions=read_ml100k_ratings(paths["u.data"]),
        items=read_ml100k_items(paths["u.item"], genres),
        users=read_ml100k_users(paths["u.user"]),
    )


# ------------------------------------------------------------------------------------------------------ ML-1M


def _read_double_colon(path: Path, names: list[str], text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a '::'-separated file with pandas' fast C parser.

    sep="::" would force the slow python engine; these files hold no tabs, so '::' is swapped for a tab.
    Only used for ratings/users, whose fields never contain ':' (titles can, see read_ml1m_movies).
    """
    data = path.read_bytes()
    if b"\t" in data:
        raise DataError(f"{path.name} must not contain tab characters", path=path)
    return _read_separated(io.BytesIO(data.replace(b"::", b"\t")), path, "\t", names,
                           encoding=_ENCODING, text_columns=text_columns)


def read_ml1m_ratings(path: Path) -> pd.DataFrame:
    """ratings.dat: UserID::MovieID::Rating::Timestamp."""
    path = Path(path)
    raw = _read_double_colon(path, ["user_id", "item_id", "rating", "timestamp"])
    _check_rows(raw, path)
    return _ratings_frame(raw, path)


def read_ml1m_movies(path: Path) -> pd.DataFrame:
    """movies.dat: MovieID::Title::Genres, latin-1; genres are already '|'-joined.

    Split per line on the first and the last '::', so a title containing ':' (or ending in one) stays whole.
    """
    path = Path(path)
    ids, titles, genres = [], [], []
    for lineno, line in enumerate(path.read_text(encoding=_ENCODING).splitlines(), start=1):
        if not line:
            continue
        item, sep1, rest = line.partition("::")
        title, sep2, genre = rest.rpartition("::")
        if not (sep1 and sep2):
            raise DataError(f"movies.dat lines must look like 'MovieID::Title::Genres', got {line!r}",
                            path=path, row=lineno)
        ids.append(item)
        titles.append(title)
        genres.append(genre)
    if not ids:
        raise DataError("movies.dat has no rows", path=path)
    title = pd.Series(titles, dtype=object)
    items = pd.DataFrame({
        "item_id": to_int_ids(pd.Series(ids, dtype=object), path, "MovieID"),
        "title": title.to_numpy(dtype=object),
        "year": year_from_title(title).to_numpy(),
        "genres": np.asarray(genres, dtype=object),
        "description": np.full(len(ids), "", dtype=object),
    })
    items["year"] = items["year"].astype("Int64")
    return drop_duplicate_pairs(items, path, keys=("item_id",), what="item_id")[list(ITEM_COLUMNS)]


def read_ml1m_users(path: Path) -> pd.DataFrame:
    """users.dat: UserID::Gender::Age::Occupation::Zip-code.

    Columns as for ML-100K (user_id, age, gender, occupation, zip_code), but age is the ML-1M bracket code
    (1 = under 18, 18 = 18-24, ..., 56 = 56+) and the occupation code is replaced by its README name.
    """
    path = Path(path)
    raw = _read_double_colon(path, ["user_id", "gender", "age", "occupation", "zip_code"],
                             text_columns=("gender", "zip_code"))
    _check_rows(raw, path)
    raw["user_id"] = to_int_ids(raw["user_id"], path, "user_id")
    raw["age"] = to_nullable_int(raw["age"], path, "age")
    codes = to_int_ids(raw["occupation"], path, "occupation")
    bad = (codes < 0) | (codes >= len(ML1M_OCCUPATIONS))
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        raise DataError(f"occupation code must be 0..{len(ML1M_OCCUPATIONS) - 1}, got {codes[row - 1]}",
                        path=path, column="occupation", row=row)
    raw["occupation"] = np.asarray(ML1M_OCCUPATIONS, dtype=object)[codes]
    return raw[list(USER_COLUMNS)]


def load_ml1m(folder: Path) -> Dataset:
    """Load MovieLens 1M from a folder holding ratings.dat, movies.dat and users.dat."""
    folder = Path(folder)
    paths = {name: _require(folder, name, ML1M_FILES, "ml-1m") for name in ML1M_FILES}
    return Dataset(
        name="ml-1m",
        interactions=read_ml1m_ratings(paths["ratings.dat"]),
        items=read_ml1m_movies(paths["movies.dat"]),
        users=read_ml1m_users(paths["users.dat"]),
    )
