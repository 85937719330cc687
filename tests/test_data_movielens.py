"""MovieLens loaders: real ML-100K / partial ML-1M files when present, synthetic files for bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from recsys.config import DataConfig, SplitConfig
from recsys.data.errors import DataError
from recsys.data.loading import build_id_map, load_dataset, make_split
from recsys.data.movielens import (
    load_ml1m,
    load_ml100k,
    read_ml1m_movies,
    read_ml1m_users,
    read_ml100k_items,
)

REPO = Path(__file__).resolve().parents[1]


def ml1m_partial_dir() -> Path:
    """The partial ML-1M copy (movies.dat, users.dat; no ratings.dat), found like tests/conftest.py does."""
    env = os.environ.get("LLMREC_DATA_DIR")
    folder = (Path(env) if env else REPO.parent / "shared" / "data") / "ml-1m-partial"
    if not (folder / "movies.dat").is_file():
        pytest.skip(f"partial MovieLens 1M not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def ml100k(ml100k_dir):  # ml100k_dir: tests/conftest.py (skips if the shared data is absent)
    return load_ml100k(ml100k_dir)


GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def write_ml100k(folder: Path, *, data: str | None = None, item_lines: list[str] | None = None) -> Path:
    """A tiny ML-100K-shaped folder (same formats and encodings as the real one)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(data if data is not None else "1\t1\t5\t881250949\n2\t2\t3\t881250950\n")
    flags = "|".join(["0"] * 19)
    lines = item_lines if item_lines is not None else [
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags}",
        f"2|Misérables, Les (1995)|01-Jan-1995||http://x|{flags}",
    ]
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    return folder


# ------------------------------------------------------------------------------------------------ real ML-100K


def test_ml100k_counts_and_dtypes(ml100k):
    inter = ml100k.interactions
    assert len(inter) == 100_000
    assert inter["user_id"].nunique() == 943
    assert inter["item_id"].nunique() == 1682
    assert len(ml100k.items) == 1682
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert str(inter["user_id"].dtype) == "int64" and str(inter["item_id"].dtype) == "int64"
    assert str(inter["rating"].dtype) == "float64" and str(inter["timestamp"].dtype) == "Int64"
    assert inter["timestamp"].min() == 874724710 and inter["timestamp"].max() == 893286638
    assert len(ml100k.users) == 943 and set(ml100k.users["gender"]) == {"M", "F"}


def test_ml100k_item_text(ml100k):
    items = ml100k.items.set_index("item_id")
    assert items.loc[1, "title"] == "Toy Story (1995)"
    assert items.loc[1, "year"] == 1995
    assert items.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert items.loc[1, "description"] == ""
    assert items.loc[543, "title"] == "Misérables, Les (1995)"  # latin-1 byte 0xe9 decoded
    assert items.loc[1633, "title"] == "Á köldum klaka (Cold Fever) (1994)"
    # "(1995) (V)" has no trailing year: it comes from the release date instead.
    assert items.loc[1412, "year"] == 1995
    assert pd.isna(items.loc[267, "year"]) and items.loc[267, "title"] == "unknown"


# --------------------------------------------------------------------------------------------- real ML-1M part


def test_ml1m_partial_movies_and_users_parse():
    folder = ml1m_partial_dir()
    movies = read_ml1m_movies(folder / "movies.dat").set_index("item_id")
    assert len(movies) == 3883 and movies.index.max() == 3952
    assert movies.loc[1, "title"] == "Toy Story (1995)" and movies.loc[1, "year"] == 1995
    assert movies.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert movies.loc[73, "title"] == "Misérables, Les (1995)"
    users = read_ml1m_users(folder / "users.dat")
    assert len(users) == 6040 and set(users["age"].unique()) == {1, 18, 25, 35, 45, 50, 56}
    # 1::F::1::10::48067 -> occupation code 10 is "K-12 student"
    assert users.iloc[0].tolist() == [1, 1, "F", "K-12 student", "48067"]


def test_ml1m_partial_lacks_ratings():
    folder = ml1m_partial_dir()
    with pytest.raises(DataError, match="lacks ratings.dat") as exc:
        load_ml1m(folder)
    assert exc.value.path == folder / "ratings.dat"
    assert "movies.dat" in str(exc.value)  # says what the folder does have


def test_load_dataset_uses_existing_folder_and_full_item_universe(ml100k_dir):
    data_dir = ml100k_dir.parent
    ds = load_dataset(DataConfig(dataset="ml-100k", data_dir=data_dir))  # present: no download
    ids = build_id_map(ds, make_split(ds, SplitConfig()))
    assert (ids.n_users, ids.n_items) == (943, 1682)


def test_load_dataset_path_to_partial_ml1m():
    folder = ml1m_partial_dir()
    with pytest.raises(DataError, match="lacks ratings.dat"):
        load_dataset(DataConfig(dataset=str(folder)))


# ----------------------------------------------------------------------------------------------- synthetic


def test_ml1m_synthetic_full_folder(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n")
    (tmp_path / "movies.dat").write_bytes(
        "10::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n20::Misérables, Les (1995)::Drama\n"
        .encode("latin-1"))
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    ds = load_ml1m(tmp_path)
    assert ds.interactions[["user_id", "item_id"]].values.tolist() == [[1, 10], [1, 20], [2, 10]]
    assert ds.interactions["timestamp"].tolist() == [978300760, 978302109, 978301968]
    items = ds.items.set_index("item_id")
    assert items.loc[10, "title"] == "Star Wars: Episode IV - A New Hope (1977)"
    assert items.loc[10, "year"] == 1977 and items.loc[20, "title"] == "Misérables, Les (1995)"


def test_ml100k_synthetic_loads(tmp_path):
    ds = load_ml100k(write_ml100k(tmp_path / "ml-100k"))
    assert ds.items["title"].tolist() == ["Toy Story (1995)", "Misérables, Les (1995)"]
    assert ds.users["zip_code"].tolist() == ["85711", "T8H1N"]


def test_ml100k_missing_file_named(tmp_path):
    folder = write_ml100k(tmp_path / "ml-100k")
    (folder / "u.data").unlink()
    with pytest.raises(DataError, match="lacks u.data") as exc:
        load_ml100k(folder)
    assert exc.value.path == folder / "u.data"


def test_ml100k_bad_id_names_file_column_row(tmp_path):
    folder = write_ml100k(tmp_path / "ml-100k", data="1\t1\t5\t881250949\n2\tx7\t3\t881250950\n")
    with pytest.raises(DataError, match="'x7'") as exc:
        load_ml100k(folder)
    assert (exc.value.path, exc.value.column, exc.value.row) == (folder / "u.data", "item_id", 2)
    assert "u.data" in str(exc.value) and "row 2" in str(exc.value)


def test_ml100k_item_field_count(tmp_path):
    folder = write_ml100k(tmp_path / "ml-100k", item_lines=["1|Toy Story (1995)|01-Jan-1995||http://x|0|1"])
    with pytest.raises(DataError, match="24 '\\|'-separated fields") as exc:
        read_ml100k_items(folder / "u.item", GENRES)
    assert exc.value.path == folder / "u.item" and exc.value.row == 1
