"""Id ranges at load, as a kind: any int64 raw id is read exactly (negative, above 2^31, above 2^53, sparse), and
anything else is rejected naming the file, the column and the row. tests/test_flow_unusual_inputs.py follows such
ids through every later stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys.data.errors import DataError
from recsys.data.llmrec_json import load_llmrec_json
from recsys.data.tabular import load_interactions, load_item_table

EXTREMES = [-(2**63), -(2**40) - 7, -1, 0, 2**31, 2**53 + 1, 2**63 - 1]


def test_every_int64_id_is_read_exactly_from_csv_and_parquet(tmp_path):
    csv = tmp_path / "interactions.csv"
    csv.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in zip(EXTREMES, EXTREMES[::-1],
                                                                               strict=True)))
    got = load_interactions(csv)
    assert got["user_id"].tolist() == EXTREMES and got["item_id"].tolist() == EXTREMES[::-1]
    # ids stored as text (a string column) stay exact too
    text = tmp_path / "text.parquet"
    pd.DataFrame({"user_id": [str(v) for v in EXTREMES], "item_id": ["5"] * len(EXTREMES)}).to_parquet(text)
    assert load_interactions(text)["user_id"].tolist() == EXTREMES
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n" + "".join(f"{i},Film {i}\n" for i in EXTREMES))
    assert load_item_table(items)["item_id"].tolist() == EXTREMES


@pytest.mark.parametrize(("values", "row", "says"), [
    (np.array([1, 2**63], dtype=np.uint64), 2, "in the int64 range"),
    (np.array([1.0, 2.0**53 + 2]), 2, r"2\^53 or more and was read as a floating-point number"),
    (np.array(["3", "-18446744073709551616"], dtype=object), 2, "in the int64 range"),
])
def test_an_id_outside_int64_or_inexact_is_rejected_naming_file_column_and_row(tmp_path, values, row, says):
    path = tmp_path / "interactions.parquet"
    pd.DataFrame({"user_id": [1, 2], "item_id": values}).to_parquet(path)
    with pytest.raises(DataError, match=says) as exc:
        load_interactions(path)
    assert (exc.value.path, exc.value.column, exc.value.row) == (path, "item_id", row)


def test_csv_id_beyond_int64_is_rejected(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id\n1,1\n9223372036854775808,2\n")
    with pytest.raises(DataError, match="in the int64 range") as exc:
        load_interactions(path)
    assert (exc.value.column, exc.value.row) == ("user_id", 2)


def test_llmrec_json_ids_beyond_int64_are_rejected(tmp_path):
    ok = {"train.json": {"0": [1, 2]}, "val.json": {"0": [3]}, "test.json": {"0": [4]}}
    for name, bad, says in (("train.json", {"0": [1, 2**63]}, "item id 9223372036854775808 is outside"),
                            ("test.json", {str(-(2**63) - 1): [4]}, "user key '-9223372036854775809' is outside")):
        folder = tmp_path / name
        folder.mkdir()
        for file, body in {**ok, name: bad}.items():
            (folder / file).write_text(json.dumps(body))
        with pytest.raises(DataError, match=says) as exc:
            load_llmrec_json(folder)
        assert exc.value.path == folder / name
    folder = tmp_path / "extremes"
    folder.mkdir()
    for file, body in {"train.json": {str(2**63 - 1): [-(2**63), 5]}, "val.json": {str(2**63 - 1): [6]},
                       "test.json": {str(2**63 - 1): [7]}}.items():
        (folder / file).write_text(json.dumps(body))
    ds, split = load_llmrec_json(folder)
    assert split.train["user_id"].tolist() == [2**63 - 1] * 2 and -(2**63) in set(split.train["item_id"])
