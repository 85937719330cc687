"""What every stage task shares: the `stage_task` decorator (Prefect caching on content keys) and reading the split.

A stage task takes `store_root`, the refs of its inputs and its configs, writes one artifact and returns its ref.
Prefect caches the run on the artifact's address (`ArtifactCache`), so a task body only computes and writes.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import CachePolicy
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
    "evaluate": "4",  # 2: metrics gain ndcg_official; 3: per-user test metrics; 4: cold users left out, counted
    "candidates": "2",  # 2: users without a training interaction get no candidates
    "llmrec": "1",
    "llmrec-evaluate": "4",  # as "evaluate"
    "llama4rec-pairs": "1",
    "llama4rec-train": "1",
    "llama4rec-lists": "1",
    "llama4rec-evaluate": "1",
    "llama4rec-instructions": "1",
    "llm4idrec-data": "1",
    "llm4idrec-lora": "1",
    "llm4idrec-generate": "1",
    "llm4idrec-split": "1",
    "llm4idrec-job": "1",  # a hosted fine-tuning job's result
    "llm4idrec-answers": "1",  # a batch of the fine-tuned model's answers (hosted generation)
}

RefOf = Callable[[Mapping[str, Any]], ArtifactRef]
# Parameters that never change what a stage writes: where the store is, and a callback that only watches training
# (progress, a tuning trial's pruner).
UNKEYED = frozenset({"store_root", "on_epoch"})


def stage_ref(stage: str, params: Mapping[str, Any]) -> ArtifactRef:
    """The output address of `stage` called with `params` (`UNKEYED` parameters excluded)."""
    keyed = {k: v for k, v in params.items() if k not in UNKEYED}
    return ArtifactRef(stage, content_key(stage, STAGE_VERSIONS[stage], keyed))


def table_digests(store: ArtifactStore, refs: list[str], table: str) -> list[list[str]]:
    """[ref, sha256 of its `table`] for each written ref: what a key covers of inputs whose rows can change under
    one ref (an augment batch completed by a re-run)."""
    return [[str(r), store.manifest(r)["artifacts"][table]["sha256"]] for r in refs if store.exists(r)]


# The error each task run's key function raised, by task run id, until that run's body raises it (`stage_task`).
_KEY_ERRORS: dict[Any, Exception] = {}
_KEY_ERRORS_LOCK = threading.Lock()


@dataclass
class ArtifactCache(CachePolicy):
    """Keys a task run on the address of the artifact it writes (`ref_of(parameters)`), "<stage>-<key>". Only a run
    that succeeds persists its result (in the store: `bind`), so one that failed after writing (an augment batch
    with failed items) runs again; a result cached for an artifact no longer in the store gives no key: a run.
    When `ref_of` raises, Prefect logs it and runs the task body anyway: the body of a `stage_task` then raises
    that same error instead of doing the work (a failed download is not tried a second time)."""

    ref_of: RefOf | None = None

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        assert self.ref_of is not None
        try:
            ref = self.ref_of(inputs)
        except Exception as exc:
            with _KEY_ERRORS_LOCK:
                _KEY_ERRORS[task_ctx.task_run.id] = exc
            raise
        key = f"{ref.stage}-{ref.key}"
        if not ArtifactStore(inputs["store_root"]).exists(ref) and task_ctx.result_store.exists(key):
            return None  # the run writes the artifact again, and the cached ref is then true again
        return key


def _key_error() -> Exception | None:
    """The error the current task run's key function raised, if any (taken: asked once per run)."""
    ctx = TaskRunContext.get()
    if ctx is None:
        return None
    with _KEY_ERRORS_LOCK:
        return _KEY_ERRORS.pop(ctx.task_run.id, None)


def stage_task(ref_of: str | RefOf, **options: Any) -> Callable[[Callable[..., str]], Any]:
    """`prefect.task` for a stage, cached on the artifact that `ref_of(parameters)` addresses (a stage name means
    `stage_ref(name, parameters)`); `options` go to `prefect.task` (name, task_run_name, ...). A task run whose
    `ref_of` raised fails with that error without running the body."""
    if isinstance(ref_of, str):
        ref_of = functools.partial(stage_ref, ref_of)
    decorate = task(cache_policy=ArtifactCache(ref_of=ref_of), result_serializer="json", persist_result=True,
                    **options)

    def stage(fn: Callable[..., str]) -> Any:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> str:
            error = _key_error()
            if error is not None:
                raise error
            return fn(*args, **kwargs)

        return decorate(body)

    return stage


def bind(task: Task, store_root: str | Path) -> Task:
    """The task with its persisted results kept inside the artifact store, so caching follows the store."""
    return task.with_options(result_storage=Path(store_root).expanduser().resolve() / PREFECT_RESULTS)


def read_split(store: ArtifactStore, split_ref: str) -> tuple[Split, IdMap]:
    """The raw-id split and its id map from a `split` artifact."""
    split = Split(*(store.read_table(split_ref, part) for part in ("train", "valid", "test")))
    return split, IdMap.from_frames(store.read_table(split_ref, "user_map"), store.read_table(split_ref, "item_map"))


def read_dense_split(store: ArtifactStore, split_ref: str) -> tuple[DenseSplit, IdMap]:
    """The dense-id split (for torch) and its id map from a `split` artifact; messages about its users name the
    stored train table."""
    split, ids = read_split(store, split_ref)
    return DenseSplit.from_split(split, ids, source=str(store.path_of(split_ref, "train"))), ids
