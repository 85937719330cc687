"""Entry points from config to data: load a dataset, split it, and fix the id universe.

DataConfig.dataset is "ml-100k", "ml-1m" (downloaded on first use into DataConfig.resolved_data_dir()), or a
path: a Parquet/CSV interactions file, a folder with interactions.(parquet|csv) [+ items.(parquet|csv)], or an
LLMRec JSON folder (train.json, val.json, test.json; use split method "dir" on the same folder to keep its split),
or a local MovieLens folder (u.data ... / ratings.dat ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.config import DataConfig, SplitConfig
from recsys.data.dataset import Dataset, IdMap, Split
from recsys.data.download import ensure_movielens
from recsys.data.errors import DataError
from recsys.data.llmrec_json import JSON_FILES, load_llmrec_json
from recsys.data.movielens import load_ml1m, load_ml100k
from recsys.data.split import (
    cap_train,
    check_given_split,
    check_held_out,
    load_split_dir,
    split_files,
    split_interactions,
)
from recsys.data.tabular import load_item_table, load_tabular, load_tabular_dir, merge_items

MOVIELENS_LOADERS: dict[str, Callable[[Path], Dataset]] = {"ml-100k": load_ml100k, "ml-1m": load_ml1m}


def _load_path(path: Path) -> Dataset:
    """A user-supplied dataset: an interactions file, a tabular folder or an LLMRec JSON folder."""
    if path.is_dir():
        if (path / "train.json").is_file():
            return load_llmrec_json(path)[0]
        # A local copy of a MovieLens folder (ratings.dat may be missing: load_ml1m then says so).
        if (path / "u.data").is_file():
            return load_ml100k(path)
        if (path / "ratings.dat").is_file() or (path / "movies.dat").is_file():
            return load_ml1m(path)
        return load_tabular_dir(path)
    if path.is_file():
        return load_tabular(path, None, path.stem)
    raise DataError(f"dataset is neither one of {', '.join(MOVIELENS_LOADERS)} nor an existing file or folder",
                    path=path)


def with_item_table(ds: Dataset, items_path: Path) -> Dataset:
    """Replace the dataset's item text with the table at `items_path`; items it lacks keep their old rows."""
    table = load_item_table(items_path)
    kept = ds.items.loc[~ds.items["item_id"].isin(table["item_id"])]
    items = pd.concat([table, kept], ignore_index=True) if len(kept) else table
    items = merge_items(items, ds.interactions["item_id"].to_numpy())
    return Dataset(name=ds.name, interactions=ds.interactions, items=items, users=ds.users)


def filter_min_rating(ds: Dataset, min_rating: float) -> Dataset:
    """Keep interactions with rating >= min_rating; the item table (the ranking universe) is unchanged."""
    ratings = ds.interactions["rating"]
    if ratings.isna().all():
        raise DataError(f"min_rating={min_rating} is set but dataset {ds.name!r} has no ratings", column="rating")
    kept = ds.interactions.loc[ratings >= min_rating].reset_index(drop=True)
    if len(kept) == 0:
        raise DataError(f"no interaction of dataset {ds.name!r} has rating >= {min_rating}", column="rating")
    return Dataset(name=ds.name, interactions=kept, items=ds.items, users=ds.users)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the dataset named by `cfg`, attach `cfg.items_path` if given, and apply `cfg.min_rating`."""
    if cfg.dataset in MOVIELENS_LOADERS:
        folder = ensure_movielens(cfg.dataset, cfg.resolved_data_dir())  # type: ignore[arg-type]
        ds = MOVIELENS_LOADERS[cfg.dataset](folder)
        source = folder
    else:
        source = Path(cfg.dataset).expanduser()
        ds = _load_path(source)
    if cfg.items_path is not None:
        ds = with_item_table(ds, Path(cfg.items_path))
    if cfg.min_rating is not None:
        ds = filter_min_rating(ds, cfg.min_rating)
    return replace(ds, source=str(source))


def _split_paths(folder: Path) -> dict[str, Path]:
    """The file each split part was read from, for error messages."""
    if (folder / "train.json").is_file():
        return {part: next((folder / n for n in names if (folder / n).is_file()), folder / names[0])
                for part, names in JSON_FILES.items()}
    return split_files(folder)


def check_split_ids(split: Split, ds: Dataset, paths: dict[str, Path]) -> None:
    """Every split user must be a dataset user and every split item a dataset item, else a DataError."""
    users = ds.interactions["user_id"].to_numpy()
    if ds.users is not None and "user_id" in ds.users:
        users = np.concatenate([users, ds.users["user_id"].to_numpy(np.int64)])
    known = {"user_id": np.unique(users),
             "item_id": np.union1d(ds.items["item_id"].to_numpy(), ds.interactions["item_id"].to_numpy())}
    for part, frame in split.parts().items():
        path = paths[part]
        for column, ids in known.items():
            unknown = ~np.isin(frame[column].to_numpy(), ids)
            if unknown.any():
                pos = int(np.flatnonzero(unknown)[0])
                # JSON splits have no rows, only user keys; tabular files report the data row.
                row = None if path.suffix == ".json" else pos + 1
                raise DataError(
                    f"{part} split has {int(unknown.sum())} pair(s) whose {column} is not in dataset {ds.name!r}; "
                    f"first: user_id {frame['user_id'].iat[pos]}, item_id {frame['item_id'].iat[pos]}",
                    path=path, column=column, row=row)


def make_split(ds: Dataset, cfg: SplitConfig) -> Split:
    """Split `ds` as `cfg` says; method "dir" reads the split files and checks their ids against `ds`.

    Either way the split is checked before anything trains on it: no pair in two parts (or dropped, `cfg.overlap`),
    cold users of a given split named, users too sparse for a computed split named, and a DataError when valid or
    test has no user to evaluate (recsys/data/degenerate.py). With `cfg.max_train_per_user`, each user's training
    pairs are then capped (`cap_train`, the sparse-data protocol).
    """
    if cfg.method == "dir":
        assert cfg.split_dir is not None  # SplitConfig enforces this
        folder = Path(cfg.split_dir).expanduser()
        split = load_split_dir(folder, overlap=cfg.overlap)
        check_split_ids(split, ds, _split_paths(folder))
        check_given_split(split, _split_paths(folder))
    else:
        split = split_interactions(ds.interactions, cfg)
        check_held_out(split, ds.interactions, cfg, ds.source)
    if cfg.max_train_per_user is not None:
        stamps = ds.interactions if "timestamp" in ds.interactions else None
        split = cap_train(split, cfg.max_train_per_user, seed=cfg.seed, timestamps=stamps)
    return split


def build_id_map(ds: Dataset, split: Split) -> IdMap:
    """Dense ids over every user in the interactions and split, and every item in the item table,
    interactions and split, so items never seen in train stay in the ranking universe."""
    frames = [ds.interactions, *split.parts().values()]
    users = np.concatenate([f["user_id"].to_numpy(np.int64) for f in frames])
    items = np.concatenate([ds.items["item_id"].to_numpy(np.int64), *(f["item_id"].to_numpy(np.int64) for f in frames)])
    return IdMap.build(users, items)
