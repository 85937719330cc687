"""Splits: exact reproduction of the reference ML-100K split, the other methods, and stored split folders."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.config import SplitConfig
from recsys.data.dataset import Dataset, Split
from recsys.data.errors import DataError
from recsys.data.loading import build_id_map, make_split
from recsys.data.movielens import load_ml100k
from recsys.data.split import (
    leave_one_out,
    load_split_dir,
    random_split,
    split_interactions,
    temporal_split,
)
from recsys.data.tabular import empty_items


@pytest.fixture(scope="module")
def ml100k(ml100k_dir) -> Dataset:  # ml100k_dir / reference_split_dir: tests/conftest.py (skip if absent)
    return load_ml100k(ml100k_dir)


def pairs(df: pd.DataFrame) -> set[tuple[int, int]]:
    return set(map(tuple, df[["user_id", "item_id"]].to_numpy().tolist()))


def frame(rows, with_ts: bool = True) -> pd.DataFrame:
    """Interactions from (user, item, timestamp) rows."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype({"user_id": "int64",
                                                                                 "item_id": "int64"})
    df["timestamp"] = df["timestamp"].astype("Int64") if with_ts else pd.array([pd.NA] * len(df), dtype="Int64")
    df["rating"] = np.nan
    return df[["user_id", "item_id", "rating", "timestamp"]]


def synthetic(n_users: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        items = rng.choice(500, size=int(rng.integers(1, 40)), replace=False)
        rows += [(u, int(i), int(rng.integers(1000, 1100))) for i in items]
    return frame(rows)


# ------------------------------------------------------------------------------------ the reference split


def test_random_split_reproduces_reference(ml100k, reference_split_dir):
    bench = reference_split_dir
    manifest = json.loads((bench / "manifest.json").read_text())
    split = split_interactions(ml100k.interactions, SplitConfig(method="random", seed=2020))
    for part, df in split.parts().items():
        reference = pd.read_csv(bench / f"{part}.csv")
        assert pairs(df) == pairs(reference), part
        # Same bytes as the published CSV once written the same way.
        data = df.to_csv(index=False, lineterminator="\n").encode()
        assert hashlib.sha256(data).hexdigest() == manifest["files"][f"{part}.csv"]["sha256"], part


def test_reference_split_dir_and_id_map(ml100k, reference_split_dir):
    split = make_split(ml100k, SplitConfig(method="dir", split_dir=reference_split_dir))
    assert [len(p) for p in split.parts().values()] == [80_808, 9_596, 9_596]
    ids = build_id_map(ml100k, split)
    assert (ids.n_users, ids.n_items) == (943, 1682)
    never_in_train = np.setdiff1d(ids.item_ids, split.train["item_id"].to_numpy())
    assert never_in_train.size == 44  # they stay in the ranking universe


def test_random_split_is_fast(ml100k):
    start = time.perf_counter()
    random_split(ml100k.interactions)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------- methods on toys


def test_random_split_sizes_partition_and_seed():
    inter = synthetic()
    split = random_split(inter, valid_ratio=0.2, test_ratio=0.1, seed=7)
    assert pairs(split.train) | pairs(split.valid) | pairs(split.test) == pairs(inter)
    assert len(split.train) + len(split.valid) + len(split.test) == len(inter)
    n = inter.groupby("user_id").size()
    assert split.valid.groupby("user_id").size().reindex(n.index, fill_value=0).equals(np.floor(0.2 * n + 1e-9)
                                                                                        .astype("int64"))
    assert split.test.groupby("user_id").size().reindex(n.index, fill_value=0).equals((n // 10).astype("int64"))
    again = random_split(inter, valid_ratio=0.2, test_ratio=0.1, seed=7)
    other = random_split(inter, valid_ratio=0.2, test_ratio=0.1, seed=8)
    assert pairs(again.test) == pairs(split.test) and pairs(other.test) != pairs(split.test)


def test_temporal_split_takes_latest():
    # user 1: 10 items at times 10..1 (item 0 latest); user 2: ties at one time -> broken by item id.
    rows = [(1, i, 10 - i) for i in range(10)] + [(2, i, 5) for i in range(10)]
    split = temporal_split(frame(rows), valid_ratio=0.2, test_ratio=0.1)
    assert pairs(split.test) == {(1, 0), (2, 9)}
    assert pairs(split.valid) == {(1, 1), (1, 2), (2, 7), (2, 8)}
    assert len(split.train) == 14


def test_temporal_split_needs_timestamps():
    inter = frame([(1, 1, 5), (1, 2, None)])
    with pytest.raises(DataError, match="needs a timestamp") as exc:
        temporal_split(inter)
    assert (exc.value.column, exc.value.row) == ("timestamp", 2)


def test_leave_one_out_by_time_and_small_users():
    rows = [(1, 5, 3), (1, 6, 1), (1, 7, 2), (1, 8, 0), (2, 1, 1), (2, 2, 2)]
    split = leave_one_out(frame(rows))
    assert pairs(split.test) == {(1, 5)} and pairs(split.valid) == {(1, 7)}
    assert pairs(split.train) == {(1, 6), (1, 8), (2, 1), (2, 2)}  # user 2 has < 3: all train


def test_leave_one_out_without_timestamps_is_seeded():
    inter = synthetic().assign(timestamp=pd.array([pd.NA] * len(synthetic()), dtype="Int64"))
    split = leave_one_out(inter, seed=3)
    n = inter.groupby("user_id").size()
    assert len(split.test) == len(split.valid) == int((n >= 3).sum())
    assert pairs(leave_one_out(inter, seed=3).test) == pairs(split.test)
    # Same per-user permutation as the random split: the loo test item is the random split's last one.
    rnd = random_split(inter, valid_ratio=0.0, test_ratio=0.1, seed=3)
    one_test_item = n[(n >= 10) & (n < 20)].index  # floor(0.1 n) == 1
    expected = pairs(rnd.test[rnd.test["user_id"].isin(one_test_item)])
    assert expected and expected <= pairs(split.test)


def test_split_method_dir_needs_files():
    with pytest.raises(ValueError, match="load_split_dir"):
        split_interactions(synthetic(), SplitConfig(method="dir", split_dir=Path("x")))


# ---------------------------------------------------------------------------------------- stored folders


def write_split(folder: Path, parts: dict[str, str], suffix: str = ".csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in parts.items():
        (folder / f"{name}{suffix}").write_text("user_id,item_id\n" + body)
    return folder


GOOD = {"train": "1,1\n1,2\n2,1\n", "valid": "1,3\n", "test": "2,3\n"}


def test_load_split_dir_csv_and_parquet_preferred(tmp_path):
    folder = write_split(tmp_path / "s", GOOD)
    split = load_split_dir(folder)
    assert pairs(split.train) == {(1, 1), (1, 2), (2, 1)} and str(split.test["item_id"].dtype) == "int64"
    pd.DataFrame({"user_id": [9], "item_id": [9]}).to_parquet(folder / "test.parquet")
    assert pairs(load_split_dir(folder).test) == {(9, 9)}


def test_load_split_dir_missing_part(tmp_path):
    folder = write_split(tmp_path / "s", {"train": GOOD["train"], "test": GOOD["test"]})
    with pytest.raises(DataError, match="lacks valid.parquet or valid.csv; it has: test.csv, train.csv"):
        load_split_dir(folder)


def test_load_split_dir_bad_column_and_ids(tmp_path):
    folder = write_split(tmp_path / "a", GOOD)
    (folder / "valid.csv").write_text("user,item_id\n1,3\n")
    with pytest.raises(DataError, match="lacks required column 'user_id'; columns found: user, item_id") as exc:
        load_split_dir(folder)
    assert exc.value.path == folder / "valid.csv"
    folder = write_split(tmp_path / "b", {**GOOD, "test": "2,3\n2,4.5\n"})
    with pytest.raises(DataError, match="has 4.5") as exc:
        load_split_dir(folder)
    assert (exc.value.path, exc.value.column, exc.value.row) == (folder / "test.csv", "item_id", 2)


def test_load_split_dir_empty_train_error_empty_valid_warns(tmp_path, caplog):
    with pytest.raises(DataError, match="train split has no rows"):
        load_split_dir(write_split(tmp_path / "a", {**GOOD, "train": ""}))
    with caplog.at_level(logging.WARNING, logger="llmrec.data"):
        split = load_split_dir(write_split(tmp_path / "b", {**GOOD, "valid": ""}))
    assert len(split.valid) == 0
    assert any("valid split has no rows" in r.getMessage() for r in caplog.records)


def test_make_split_dir_rejects_unknown_ids(tmp_path):
    inter = frame([(1, 1, 1), (1, 2, 2), (2, 1, 3), (1, 3, 4), (2, 3, 5)])
    ds = Dataset("toy", inter, empty_items(np.array([1, 2, 3])))
    folder = write_split(tmp_path / "s", GOOD)
    split = make_split(ds, SplitConfig(method="dir", split_dir=folder))
    assert isinstance(split, Split) and build_id_map(ds, split).n_items == 3
    (folder / "test.csv").write_text("user_id,item_id\n2,3\n2,99\n")
    with pytest.raises(DataError, match="item_id 99") as exc:
        make_split(ds, SplitConfig(method="dir", split_dir=folder))
    assert (exc.value.path, exc.value.column, exc.value.row) == (folder / "test.csv", "item_id", 2)
    (folder / "test.csv").write_text("user_id,item_id\n7,3\n")
    with pytest.raises(DataError, match="user_id 7") as exc:
        make_split(ds, SplitConfig(method="dir", split_dir=folder))
    assert (exc.value.column, exc.value.row) == ("user_id", 1)


# ------------------------------------------------------------------------------------ the sparse-data protocol


def test_cap_train_keeps_the_earliest_k_by_timestamp_and_leaves_valid_and_test(ml100k, reference_split_dir):
    cfg = SplitConfig(method="dir", split_dir=reference_split_dir, max_train_per_user=5)
    full = make_split(ml100k, SplitConfig(method="dir", split_dir=reference_split_dir))
    capped = make_split(ml100k, cfg)
    assert capped.valid.equals(full.valid) and capped.test.equals(full.test)
    per_user = capped.train.groupby("user_id").size()
    assert per_user.max() == 5 and per_user.index.equals(full.train.groupby("user_id").size().index)
    assert pairs(capped.train) <= pairs(full.train)
    # Every kept pair is no later than any dropped pair of the same user (ML-100K has a timestamp on every row).
    stamps = ml100k.interactions.groupby(["user_id", "item_id"])["timestamp"].min()
    keys = list(zip(capped.train.user_id, capped.train.item_id, strict=True))
    kept = capped.train.assign(ts=stamps.loc[keys].to_numpy())
    dropped = pairs(full.train) - pairs(capped.train)
    latest_kept = kept.groupby("user_id")["ts"].max()
    assert all(stamps.loc[(u, i)] >= latest_kept[u] for u, i in dropped)


def test_cap_train_without_timestamps_is_a_seeded_random_choice():
    interactions = frame([(u, i, 0) for u in (1, 2) for i in range(10 * u)], with_ts=False)
    base = random_split(interactions, valid_ratio=0.1, test_ratio=0.1, seed=7)
    a = make_split(Dataset("t", interactions.drop(columns="timestamp"), empty_items(np.arange(20))),
                   SplitConfig(seed=7, max_train_per_user=3))
    b = make_split(Dataset("t", interactions.drop(columns="timestamp"), empty_items(np.arange(20))),
                   SplitConfig(seed=7, max_train_per_user=3))
    c = make_split(Dataset("t", interactions.drop(columns="timestamp"), empty_items(np.arange(20))),
                   SplitConfig(seed=8, max_train_per_user=3))
    assert a.train.equals(b.train) and a.train.groupby("user_id").size().tolist() == [3, 3]
    assert pairs(a.train) <= pairs(base.train)
    assert pairs(a.valid) == pairs(base.valid) and pairs(a.test) == pairs(base.test)
    assert not a.train.equals(c.train)  # another seed: another pick
