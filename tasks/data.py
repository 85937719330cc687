"""Prefect tasks for the data stages: load a dataset, split it and build its id maps."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from recsys.config import DataConfig, SplitConfig
from recsys.data.dataset import Dataset
from recsys.data.download import ensure_movielens
from recsys.data.loading import build_id_map, load_dataset, make_split
from storage.keys import files_fingerprint
from storage.store import ArtifactRef, ArtifactStore
from tasks.common import stage_ref, stage_task

KNOWN_DATASETS = ("ml-100k", "ml-1m")
# Where the data lies is not what it is: these fields are left out of the dataset's key (its files' bytes are in).
DATA_LOCATIONS = {"data_dir", "items_path"}


def _files_under(path: Path | None) -> list[Path]:
    if path is None or not path.exists():
        return []
    return [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())


def dataset_artifact(params: Mapping[str, Any]) -> ArtifactRef:
    """The dataset's address: its settings and the names and bytes of its files, not where they lie, so that the
    same data reached by another path (relative or absolute, a copy) is the same dataset and an edited file is a
    new one. A MovieLens archive is fetched first, so that the address covers its files' bytes."""
    cfg: DataConfig = params["data"]
    known = cfg.dataset in KNOWN_DATASETS
    if known:
        ensure_movielens(cfg.dataset, cfg.resolved_data_dir())  # type: ignore[arg-type]
    source = cfg.resolved_data_dir() / cfg.dataset if known else Path(cfg.dataset).expanduser()
    keyed = {
        "data": {**cfg.model_dump(mode="json", exclude=DATA_LOCATIONS), "dataset": cfg.dataset if known else None},
        "files": files_fingerprint(_files_under(source)),
        "item_files": files_fingerprint(_files_under(cfg.items_path)),
    }
    return stage_ref("dataset", keyed)


def split_artifact(params: Mapping[str, Any]) -> ArtifactRef:
    """The split's address: the dataset's, the split settings and, for a given split folder, its files' names
    and bytes (not the folder's path)."""
    cfg: SplitConfig = params["split"]
    keyed = {
        "dataset_ref": params["dataset_ref"],
        # An unset max_train_per_user is left out, so splits made before the option existed keep their key.
        "split": cfg.model_dump(mode="json", exclude={"split_dir"} | ({"max_train_per_user"}
                                                                      if cfg.max_train_per_user is None else set())),
        "files": files_fingerprint(_files_under(cfg.split_dir)) if cfg.method == "dir" else [],
    }
    return stage_ref("split", keyed)


@stage_task(dataset_artifact, name="load-dataset")
def load_data(store_root: str, data: DataConfig) -> str:
    """Load interactions, items and users into the store; returns the `dataset` ref."""
    store = ArtifactStore(store_root)
    ref = dataset_artifact({"data": data})
    ds = load_dataset(data)
    with store.write(ref.stage, ref.key, {"data": data}) as w:
        w.table("interactions", ds.interactions)
        w.table("items", ds.items)
        if ds.users is not None:
            w.table("users", ds.users)
        w.json("info", {"name": ds.name, "source": ds.source})  # source: where it was first read from
    get_run_logger().info(
        "dataset %s: %d interactions, %d users, %d items",
        ds.name, len(ds.interactions), ds.interactions["user_id"].nunique(), len(ds.items),
    )
    return str(ref)


def read_dataset(store: ArtifactStore, dataset_ref: str) -> Dataset:
    """The Dataset held by a `dataset` artifact."""
    names = store.manifest(dataset_ref)["artifacts"]
    users = store.read_table(dataset_ref, "users") if "users" in names else None
    info = store.read_json(dataset_ref, "info")
    return Dataset(
        name=info["name"],
        interactions=store.read_table(dataset_ref, "interactions"),
        items=store.read_table(dataset_ref, "items"),
        users=users,
        source=info.get("source"),
    )


@stage_task(split_artifact, name="split")
def split_data(store_root: str, dataset_ref: str, split: SplitConfig) -> str:
    """Split the dataset into train/valid/test and store them with the raw<->dense id maps; returns the ref."""
    store = ArtifactStore(store_root)
    params = {"dataset_ref": dataset_ref, "split": split}
    ref = split_artifact(params)
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
