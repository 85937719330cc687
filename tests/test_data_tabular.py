"""User-supplied Parquet/CSV data: happy paths, and one clear error per kind of bad input."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from recsys.config import DataConfig
from recsys.data.errors import DataError
from recsys.data.loading import load_dataset
from recsys.data.tabular import load_interactions, load_item_table, load_tabular


def write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# ---------------------------------------------------------------------------------------------- happy paths


def test_csv_interactions_contract(tmp_path):
    path = write(tmp_path / "inter.csv", "user_id,item_id,rating,timestamp,extra\n1,10,4.5,100,a\n2,3.0,,200,b\n")
    df = load_interactions(path)
    assert list(df.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert df["item_id"].tolist() == [10, 3]  # 3.0 is an integral float: accepted
    assert str(df["user_id"].dtype) == "int64" and str(df["item_id"].dtype) == "int64"
    assert df["rating"].iloc[0] == 4.5 and np.isnan(df["rating"].iloc[1])
    assert str(df["timestamp"].dtype) == "Int64" and df["timestamp"].tolist() == [100, 200]


def test_optional_columns_absent_and_iso_timestamps(tmp_path):
    df = load_interactions(write(tmp_path / "a.csv", "user_id,item_id\n1,2\n"))
    assert df["rating"].isna().all() and df["timestamp"].isna().all()
    assert str(df["timestamp"].dtype) == "Int64"
    df = load_interactions(write(tmp_path / "b.csv", "user_id,item_id,timestamp\n1,2,1970-01-01T00:01:40Z\n"))
    assert df["timestamp"].tolist() == [100]


def test_parquet_interactions_and_items(tmp_path):
    pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 5], "rating": [1, 2, 3]}).to_parquet(tmp_path / "i.parquet")
    pd.DataFrame({"item_id": [5, 6], "title": ["Heat (1995)", None],
                  "genres": [["Action", "Crime"], []]}).to_parquet(tmp_path / "items.parquet")
    ds = load_tabular(tmp_path / "i.parquet", tmp_path / "items.parquet", "mine")
    assert ds.name == "mine" and len(ds.interactions) == 3
    items = ds.items.set_index("item_id")
    assert items.loc[5, "genres"] == "Action|Crime" and items.loc[5, "year"] == 1995  # year from the title
    assert items.loc[6, "title"] == "" and items.loc[6, "genres"] == ""
    assert str(ds.items["year"].dtype) == "Int64"


def test_without_item_table_items_are_interacted_ids(tmp_path):
    ds = load_tabular(write(tmp_path / "i.csv", "user_id,item_id\n1,7\n2,3\n1,3\n"), None, "x")
    assert ds.items["item_id"].tolist() == [3, 7]
    assert (ds.items["title"] == "").all() and (ds.items["description"] == "").all()


def test_item_table_missing_some_items_gets_rows(tmp_path):
    inter = write(tmp_path / "i.csv", "user_id,item_id\n1,7\n2,3\n")
    items = write(tmp_path / "items.csv", "item_id,title,year,description\n7,Seven,1995,dark\n")
    ds = load_tabular(inter, items, "x")
    assert ds.items["item_id"].tolist() == [3, 7]
    assert ds.items.set_index("item_id").loc[7, "description"] == "dark"


def test_dataset_folder_via_config(tmp_path):
    folder = tmp_path / "shop"
    folder.mkdir()
    write(folder / "interactions.csv", "user_id,item_id,rating\n1,1,5\n1,2,2\n2,1,4\n")
    write(folder / "items.csv", "item_id,title\n1,One\n2,Two\n3,Three\n")
    ds = load_dataset(DataConfig(dataset=str(folder)))
    assert ds.name == "shop" and len(ds.interactions) == 3 and ds.items["item_id"].tolist() == [1, 2, 3]
    filtered = load_dataset(DataConfig(dataset=str(folder), min_rating=4))
    assert filtered.interactions["item_id"].tolist() == [1, 1]
    assert len(filtered.items) == 3  # the ranking universe is not filtered


def test_min_rating_without_ratings_is_an_error(tmp_path):
    path = write(tmp_path / "i.csv", "user_id,item_id\n1,1\n")
    with pytest.raises(DataError, match="no ratings"):
        load_dataset(DataConfig(dataset=str(path), min_rating=4))


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as exc:
        load_interactions(tmp_path / "nope.csv")
    assert exc.value.path == tmp_path / "nope.csv" and "nope.csv" in str(exc.value)


def test_missing_dataset_path(tmp_path):
    with pytest.raises(DataError, match="neither"):
        load_dataset(DataConfig(dataset=str(tmp_path / "nothing")))


def test_folder_without_interactions(tmp_path):
    write(tmp_path / "items.csv", "item_id,title\n1,a\n")
    with pytest.raises(DataError, match="lacks interactions.parquet or interactions.csv; it has: items.csv"):
        load_dataset(DataConfig(dataset=str(tmp_path)))


def test_missing_required_column_lists_found(tmp_path):
    path = write(tmp_path / "i.csv", "user,item_id,rating\n1,2,3\n")
    with pytest.raises(DataError, match="lacks required column 'user_id'; columns found: user, item_id, rating") as exc:
        load_interactions(path)
    assert exc.value.column == "user_id" and str(path) in str(exc.value)


def test_item_table_missing_title(tmp_path):
    path = write(tmp_path / "items.csv", "item_id,name\n1,a\n")
    with pytest.raises(DataError, match="'title'") as exc:
        load_item_table(path)
    assert exc.value.path == path


@pytest.mark.parametrize(("body", "column", "row", "value"), [
    ("1,2\n1,3.5\n", "item_id", 2, "3.5"),
    ("1,2\n2,3\nabc,4\n", "user_id", 3, "'abc'"),
])
def test_non_integer_ids_name_row_and_value(tmp_path, body, column, row, value):
    path = write(tmp_path / "i.csv", "user_id,item_id\n" + body)
    with pytest.raises(DataError, match=f"has {value}") as exc:
        load_interactions(path)
    assert (exc.value.path, exc.value.column, exc.value.row) == (path, column, row)
    assert f"row {row}" in str(exc.value) and f"'{column}'" in str(exc.value)


def test_null_ids(tmp_path):
    path = write(tmp_path / "i.csv", "user_id,item_id\n1,2\n2,\n")
    with pytest.raises(DataError, match="item_id is null") as exc:
        load_interactions(path)
    assert (exc.value.column, exc.value.row) == ("item_id", 2)


def test_null_ids_parquet(tmp_path):
    path = tmp_path / "i.parquet"
    pd.DataFrame({"user_id": pd.array([1, None, 3], dtype="Int64"), "item_id": [1, 2, 3]}).to_parquet(path)
    with pytest.raises(DataError, match="user_id is null") as exc:
        load_interactions(path)
    assert (exc.value.path, exc.value.row) == (path, 2)


def test_empty_dataset(tmp_path):
    path = write(tmp_path / "i.csv", "user_id,item_id\n")
    with pytest.raises(DataError, match="no data rows") as exc:
        load_interactions(path)
    assert exc.value.path == path


def test_wrong_encoding_names_offset_and_suggests_latin1(tmp_path):
    text = "user_id,item_id,title\n1,2,ok\n3,4,Misérables\n"
    path = write(tmp_path / "i.csv", text, encoding="latin-1")
    offset = text.encode("latin-1").index(b"\xe9")
    with pytest.raises(DataError, match=f"byte offset {offset} \\(line 3\\)") as exc:
        load_interactions(path)
    assert "latin-1" in str(exc.value) and exc.value.path == path and exc.value.row == 2


def test_unsupported_suffix(tmp_path):
    path = write(tmp_path / "i.xlsx", "x")
    with pytest.raises(DataError, match="unsupported suffix '.xlsx'"):
        load_interactions(path)


def test_bad_rating_names_row(tmp_path):
    path = write(tmp_path / "i.csv", "user_id,item_id,rating\n1,2,5\n1,3,great\n")
    with pytest.raises(DataError, match="'great'") as exc:
        load_interactions(path)
    assert (exc.value.column, exc.value.row) == ("rating", 2)


def test_duplicates_removed_with_one_warning(tmp_path, caplog):
    path = write(tmp_path / "i.csv", "user_id,item_id,rating\n1,2,5\n1,3,1\n1,2,4\n2,2,1\n1,3,2\n")
    with caplog.at_level(logging.WARNING, logger="llmrec.data"):
        df = load_interactions(path)
    assert df[["user_id", "item_id", "rating"]].values.tolist() == [[1, 2, 5], [1, 3, 1], [2, 2, 1]]
    records = [r for r in caplog.records if r.name == "llmrec.data"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert str(path) in message and "removed 2 duplicate" in message and "row 3" in message
