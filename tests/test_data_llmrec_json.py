"""The LLMRec JSON format (train.json / val.json / test.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.config import DataConfig, SplitConfig
from recsys.data.errors import DataError
from recsys.data.llmrec_json import load_llmrec_json
from recsys.data.loading import build_id_map, load_dataset, make_split

GOOD = {
    "train.json": {"0": [1, 2, 3], "1": [2, 4], "2": []},
    "val.json": {"0": [4], "1": []},
    "test.json": {"0": [5], "1": [1], "3": [9]},
}


def write(folder: Path, files: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


def pairs(df) -> set[tuple[int, int]]:
    return set(map(tuple, df[["user_id", "item_id"]].to_numpy().tolist()))


def test_loads_dataset_and_split(tmp_path):
    ds, split = load_llmrec_json(write(tmp_path / "netflix", GOOD))
    assert ds.name == "netflix"
    assert pairs(split.train) == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 4)}
    assert pairs(split.valid) == {(0, 4)} and pairs(split.test) == {(0, 5), (1, 1), (3, 9)}
    assert len(ds.interactions) == 9 and ds.interactions["rating"].isna().all()
    assert str(ds.interactions["timestamp"].dtype) == "Int64"
    assert ds.items["item_id"].tolist() == [1, 2, 3, 4, 5, 9] and (ds.items["title"] == "").all()
    assert 2 not in set(ds.interactions["user_id"])  # users with empty lists are skipped


def test_via_config_and_dir_split(tmp_path):
    folder = write(tmp_path / "d", GOOD)
    ds = load_dataset(DataConfig(dataset=str(folder)))
    split = make_split(ds, SplitConfig(method="dir", split_dir=folder))
    assert pairs(split.test) == {(0, 5), (1, 1), (3, 9)}
    ids = build_id_map(ds, split)
    assert (ids.n_users, ids.n_items) == (3, 6)


def test_missing_val_file(tmp_path):
    folder = write(tmp_path / "d", {k: v for k, v in GOOD.items() if k != "val.json"})
    with pytest.raises(DataError, match="does not exist") as exc:
        load_llmrec_json(folder)
    assert exc.value.path == folder / "val.json"


def test_bad_json_names_file_and_line(tmp_path):
    folder = write(tmp_path / "d", {**GOOD, "test.json": '{"0": [1,\n  2,, 3]}'})
    with pytest.raises(DataError, match="invalid JSON at line 2") as exc:
        load_llmrec_json(folder)
    assert exc.value.path == folder / "test.json"


def test_not_an_object(tmp_path):
    folder = write(tmp_path / "d", {**GOOD, "train.json": [[1, 2]]})
    with pytest.raises(DataError, match="expected a JSON object") as exc:
        load_llmrec_json(folder)
    assert exc.value.path == folder / "train.json"


def test_non_integer_user_key(tmp_path):
    folder = write(tmp_path / "d", {**GOOD, "val.json": {"0": [4], "alice": [1]}})
    with pytest.raises(DataError, match="user key 'alice' is not an integer") as exc:
        load_llmrec_json(folder)
    assert exc.value.path == folder / "val.json"


@pytest.mark.parametrize("bad", ["5", 1.5, True, None])
def test_non_integer_item_id_names_user(tmp_path, bad):
    folder = write(tmp_path / "d", {**GOOD, "train.json": {"0": [1], "7": [2, bad]}})
    with pytest.raises(DataError, match=f"user '7': item ids must be integers, got {bad!r}") as exc:
        load_llmrec_json(folder)
    assert exc.value.path == folder / "train.json" and exc.value.column == "item_id"


def test_list_value_required(tmp_path):
    folder = write(tmp_path / "d", {**GOOD, "test.json": {"0": 5}})
    with pytest.raises(DataError, match="user '0': expected a list"):
        load_llmrec_json(folder)


def test_empty_train(tmp_path):
    folder = write(tmp_path / "d", {**GOOD, "train.json": {"0": []}})
    with pytest.raises(DataError, match="train split has no interactions") as exc:
        load_llmrec_json(folder)
    assert exc.value.path == folder / "train.json"


def test_unknown_ids_in_dir_split_of_other_dataset(tmp_path):
    ds = load_dataset(DataConfig(dataset=str(write(tmp_path / "a", GOOD))))
    other = write(tmp_path / "b", {**GOOD, "test.json": {"0": [77]}})
    with pytest.raises(DataError, match="item_id 77") as exc:
        make_split(ds, SplitConfig(method="dir", split_dir=other))
    assert exc.value.path == other / "test.json" and exc.value.column == "item_id"
