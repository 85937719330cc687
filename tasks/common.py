"""What every stage task shares: content keys, Prefect caching on them, and reading the split back.

A stage task takes `store_root` (where artifacts live), the string refs of its inputs and its config sections, and
returns the string ref of its output. Its content key is derived from everything but `store_root`, so equal inputs
hit Prefect's persisted result on any later run, and a task body also returns at once if its output already exists
(a crash between writing the artifact and persisting the Prefect result then costs nothing on the re-run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.context import TaskRunContext

from recsys.data.dataset import DenseSplit, IdMap, Split
from storage.keys import content_key
from storage.store import ArtifactRef, ArtifactStore

PREFECT_RESULTS = "_prefect-results"

# Bump a stage's version when its code changes what it writes: old outputs are then never reused.
STAGE_VERSIONS: dict[str, str] = {
    "dataset": "1",
    "split": "1",
    "train": "1",
    "evaluate": "2",  # 2: metrics gain ndcg_official
    "candidates": "1",
    "llmrec": "1",
    "llmrec-evaluate": "2",  # 2: metrics gain ndcg_official
}

KeyExtra = Callable[[Mapping[str, Any]], Any]
CacheKeyFn = Callable[[TaskRunContext, dict[str, Any]], str | None]


def stage_ref(stage: str, params: Mapping[str, Any], extra: KeyExtra | None = None) -> ArtifactRef:
    """The output address of `stage` called with `params` (store_root excluded)."""
    keyed = {k: v for k, v in params.items() if k != "store_root"}
    if extra is not None:
        keyed["_extra"] = extra(params)
    return ArtifactRef(stage, content_key(stage, STAGE_VERSIONS[stage], keyed))


def keyed_on(ref_of: Callable[[Mapping[str, Any]], ArtifactRef]) -> CacheKeyFn:
    """A Prefect `cache_key_fn` that keys a task run on the content key of the output it writes."""

    def key(_: TaskRunContext, params: dict[str, Any]) -> str | None:
        ref = ref_of(params)
        store = ArtifactStore(params["store_root"])
        cache_key = f"{ref.stage}-{ref.key}"
        if not store.exists(ref) and (store.root / PREFECT_RESULTS / cache_key).exists():
            return None  # the cached result would point at an artifact someone deleted: run again
        return cache_key

    return key


def cache_key_fn(stage: str, extra: KeyExtra | None = None) -> CacheKeyFn:
    """`keyed_on` for a stage whose key is all of its parameters but `store_root` (plus `extra`)."""
    return keyed_on(lambda params: stage_ref(stage, params, extra))


def bind(task: Task, store_root: str | Path) -> Task:
    """The task with its persisted results kept inside the artifact store, so caching follows the store."""
    return task.with_options(result_storage=Path(store_root).expanduser().resolve() / PREFECT_RESULTS)


def read_split(store: ArtifactStore, split_ref: str) -> tuple[Split, IdMap]:
    """The raw-id split and its id map from a `split` artifact."""
    pair = {"user_id": "int64", "item_id": "int64"}
    split = Split(*(store.read_table(split_ref, part, columns=pair) for part in ("train", "valid", "test")))
    ids = IdMap.from_frames(
        store.read_table(split_ref, "user_map", columns={"user_id": "int64", "uid": "int64"}),
        store.read_table(split_ref, "item_map", columns={"item_id": "int64", "iid": "int64"}),
    )
    return split, ids


def read_dense_split(store: ArtifactStore, split_ref: str) -> tuple[DenseSplit, IdMap]:
    """The dense-id split (for torch) and its id map from a `split` artifact."""
    split, ids = read_split(store, split_ref)
    return DenseSplit.from_split(split, ids), ids
