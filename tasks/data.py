"""Prefect tasks for the data stages: load a dataset, split it and build its id maps."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from recsys.config import DataConfig, SplitConfig
from recsys.data.dataset import Dataset
from recsys.data.loading import build_id_map, load_dataset, make_split
from storage.keys import files_fingerprint
from storage.store import ArtifactStore
from tasks.common import cache_key_fn, read_split, stage_ref

KNOWN_DATASETS = ("ml-100k", "ml-1m")


def _files_under(path: Path | None) -> list[Path]:
    if path is None or not path.exists():
        return []
    return [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())


def dataset_sources(params: Mapping[str, Any]) -> list[list[Any]]:
    """Fingerprint of the files a dataset is read from, so an edited file is a new dataset."""
    cfg: DataConfig = params["data"]
    if cfg.dataset in KNOWN_DATASETS:
        files = _files_under(cfg.resolved_data_dir() / cfg.dataset)
    else:
        files = _files_under(Path(cfg.dataset).expanduser())
    return files_fingerprint(files + _files_under(cfg.items_path))


def split_sources(params: Mapping[str, Any]) -> list[list[Any]]:
    """Fingerprint of a given split folder (nothing for computed splits)."""
    cfg: SplitConfig = params["split"]
    return files_fingerprint(_files_under(cfg.split_dir)) if cfg.method == "dir" else []


@task(name="load-dataset", cache_key_fn=cache_key_fn("dataset", dataset_sources), result_serializer="json",
      persist_result=True)
def load_data(store_root: str, data: DataConfig) -> str:
    """Load interactions, items and users into the store; returns the `dataset` ref."""
    store = ArtifactStore(store_root)
    ref = stage_ref("dataset", {"data": data}, dataset_sources)
    if store.exists(ref):
        return str(ref)
    ds = load_dataset(data)
    with store.write(ref.stage, ref.key, {"data": data}) as w:
        w.table("interactions", ds.interactions)
        w.table("items", ds.items)
        if ds.users is not None:
            w.table("users", ds.users)
        w.json("info", {"name": ds.name})
    get_run_logger().info(
        "dataset %s: %d interactions, %d users, %d items",
        ds.name, len(ds.interactions), ds.interactions["user_id"].nunique(), len(ds.items),
    )
    return str(ref)


def read_dataset(store: ArtifactStore, dataset_ref: str) -> Dataset:
    """The Dataset held by a `dataset` artifact."""
    names = store.manifest(dataset_ref)["artifacts"]
    users = store.read_table(dataset_ref, "users") if "users" in names else None
    return Dataset(
        name=store.read_json(dataset_ref, "info")["name"],
        interactions=store.read_table(dataset_ref, "interactions"),
        items=store.read_table(dataset_ref, "items"),
        users=users,
    )


@task(name="split", cache_key_fn=cache_key_fn("split", split_sources), result_serializer="json",
      persist_result=True)
def split_data(store_root: str, dataset_ref: str, split: SplitConfig) -> str:
    """Split the dataset into train/valid/test and store them with the raw<->dense id maps; returns the ref."""
    store = ArtifactStore(store_root)
    params = {"dataset_ref": dataset_ref, "split": split}
    ref = stage_ref("split", params, split_sources)
    if store.exists(ref):
        return str(ref)
    ds = read_dataset(store, dataset_ref)
    parts = make_split(ds, split)
    ids = build_id_map(ds, parts)
    users, items = ids.to_frames()
    with store.write(ref.stage, ref.key, params) as w:
        for name, df in parts.parts().items():
            w.table(name, df[["user_id", "item_id"]].astype("int64").reset_index(drop=True))
        w.table("user_map", users)
        w.table("item_map", items)
    get_run_logger().info(
        "split (%s): train %d, valid %d, test %d pairs; %d users, %d items",
        split.method, len(parts.train), len(parts.valid), len(parts.test), ids.n_users, ids.n_items,
    )
    return str(ref)


__all__ = ["load_data", "read_dataset", "read_split", "split_data"]
