"""The artifact store: atomic stage outputs, manifests, schema and checksum validation, content keys."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from recsys.config import TrainConfig
from storage.atomic import write_json
from storage.keys import content_key, file_sha256
from storage.store import ArtifactError, ArtifactRef, ArtifactStore


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"user_id": np.array([1, 2, 3], np.int64), "item_id": np.array([7, 8, 9], np.int64)})


def test_table_roundtrip_and_manifest(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.write("split", "abc123", {"seed": 1}) as w:
        w.table("train", _frame())
    ref = ArtifactRef("split", "abc123")
    assert store.exists(ref)
    back = store.read_table(ref, "train")
    pd.testing.assert_frame_equal(back, _frame())
    entry = store.manifest(ref)["artifacts"]["train"]
    assert entry["rows"] == 3
    assert entry["schema"] == {"user_id": "int64", "item_id": "int64"}
    assert entry["sha256"] == file_sha256(store.folder(ref) / "train.parquet")
    assert store.manifest(ref)["params"] == {"seed": 1}
    assert store.manifest("split/abc123")["stage"] == "split"


def test_failed_write_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), store.write("train", "k1") as w:
        w.table("history", _frame())
        raise RuntimeError("boom")
    assert not store.exists("train/k1")
    assert list((tmp_path / "train").iterdir()) == []  # no temporary folder left behind either


def test_schema_and_checksum_are_validated(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.write("split", "k2") as w:
        w.table("train", _frame())
    path = store.folder("split/k2") / "train.parquet"
    _frame().assign(item_id=[1, 1, 1]).to_parquet(path, index=False)  # same schema, other bytes
    with pytest.raises(ArtifactError, match="corrupted"):
        store.read_table("split/k2", "train")
    with pytest.raises(ArtifactError, match="has no 'valid'"):
        store.read_table("split/k2", "valid", verify=False)


def test_tables_between_stages_keep_their_schema(tmp_path):
    store = ArtifactStore(tmp_path)
    wrong = "split table 'train' breaks its schema: column 'user_id' is large_string, expected int64"
    with pytest.raises(ArtifactError, match=wrong), store.write("split", "k1") as w:
        w.table("train", _frame().astype({"user_id": "string"}))
    with pytest.raises(ArtifactError, match=r"column 'uid' \(int64\) is missing"), store.write("split", "k1") as w:
        w.table("user_map", _frame())
    assert not store.exists("split/k1")
    with store.write("other", "k2") as w:  # a stage without schemas: written as it is
        w.table("train", _frame().astype({"item_id": "float64"}))
    (tmp_path / "other").rename(tmp_path / "split")  # as if other code had written it as a split
    with pytest.raises(ArtifactError, match="train.parquet breaks its schema: column 'item_id' is double, expected"):
        store.read_table("split/k2", "train")


def test_tensors_roundtrip_numpy_and_torch(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.write("train", "k3") as w:
        w.tensors("checkpoint", {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": np.ones(4, np.int64)})
    back = store.read_tensors("train/k3", "checkpoint")
    np.testing.assert_array_equal(back["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert back["b"].dtype == np.int64
    assert store.manifest("train/k3")["artifacts"]["checkpoint"]["shapes"] == {"a": [2, 3], "b": [4]}


def test_missing_artifact_and_bad_ref(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        store.manifest("train/nope")
    with pytest.raises(ArtifactError, match="not an artifact reference"):
        ArtifactRef.parse("no-slash")


def test_content_key_is_canonical():
    a = content_key("train", "1", {"lr": 0.001, "epochs": 10})
    assert a == content_key("train", "1", {"epochs": 10.0, "lr": 0.001})  # key order and 10 vs 10.0 don't matter
    assert a != content_key("train", "1", {"lr": 0.002, "epochs": 10})
    assert a != content_key("train", "2", {"lr": 0.001, "epochs": 10})  # stage version is part of the key
    assert a != content_key("train", "1", {"lr": 0.001, "epochs": 10}, inputs=["split/x"])
    cfg = TrainConfig(lr=0.01)
    assert content_key("t", "1", {"c": cfg}) == content_key("t", "1", {"c": TrainConfig(lr=0.01)})
    assert content_key("t", "1", {"c": cfg}) != content_key("t", "1", {"c": TrainConfig(lr=0.02)})
    with pytest.raises(TypeError):
        content_key("t", "1", {"x": object()})


def test_atomic_json_keeps_old_file_on_failure(tmp_path):
    dest = tmp_path / "metrics.json"
    write_json(dest, {"v": 1})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        write_json(dest, circular)  # fails while serialising
    assert json.loads(dest.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_replace_swaps_a_partial_output(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.write("batch", "k4") as w:
        w.json("summary", {"failed": 3})
    with store.write("batch", "k4") as w:  # without replace, the first complete output is kept
        w.json("summary", {"failed": 1})
    assert store.read_json("batch/k4", "summary") == {"failed": 3}
    with store.write("batch", "k4", replace=True) as w:
        w.json("summary", {"failed": 0})
    assert store.read_json("batch/k4", "summary") == {"failed": 0}
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["k4"]


def test_list_columns_round_trip(tmp_path):
    store = ArtifactStore(tmp_path)
    lists = pd.Series([["Drama", "Comedy"], []], dtype=pd.ArrowDtype(pa.list_(pa.string())))
    df = pd.DataFrame({"user_id": [1, 2], "liked_genres": lists, "plain": [["a"], ["b", "c"]],
                       "year": pd.array([1995, None], dtype="Int64")})
    with store.write("profiles", "k5") as w:
        w.table("rows", df)
    back = store.read_table("profiles/k5", "rows")
    assert [list(v) for v in back["liked_genres"]] == [["Drama", "Comedy"], []]
    assert [list(v) for v in back["plain"]] == [["a"], ["b", "c"]]
    assert str(back["year"].dtype) == "Int64" and back["year"].isna().tolist() == [False, True]
