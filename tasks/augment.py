"""Prefect tasks for LLM augmentation: one task run per batch of users or items, keyed on its content.

A batch's key covers the stage, the ids in the batch, the prompt-template version, the model and the sampling
parameters, and the keys of the data it reads. A finished batch is served from its persisted result on any later
run; a batch with failed items writes what succeeded, then fails its task run, and a re-run asks again only for
what is not in the response cache (the failed items).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from recsys.augment.attributes import augment_attributes
from recsys.augment.edges import augment_edges
from recsys.augment.profiles import augment_profiles
from recsys.augment.prompts import (
    ATTRIBUTES_VERSION,
    EDGES_VERSION,
    PROFILES_VERSION,
    ItemText,
    build_user_contexts,
    item_texts,
)
from recsys.augment.runner import attributes_frame, edges_frame, failures_frame, profiles_frame
from recsys.config import AugmentConfig, LLMConfig
from recsys.llm.client import LLMClient, UsageEvent
from storage.atomic import write_parquet
from storage.keys import content_key
from storage.ledger import LedgerWriter, read_ledger
from storage.store import ArtifactRef, ArtifactStore
from tasks.common import read_split, stage_task
from tasks.cost import publish_cost
from tasks.ratelimit import prefect_rate_limit_hook

TEMPLATES = {"edges": EDGES_VERSION, "profiles": PROFILES_VERSION, "attributes": ATTRIBUTES_VERSION}
STAGE_VERSION = "1"
FRAMES = {"edges": edges_frame, "profiles": profiles_frame, "attributes": attributes_frame}
OUTPUT_FILES = {"edges": "augmented_edges.parquet", "profiles": "user_profiles.parquet",
                "attributes": "item_attributes.parquet"}
FAILURES_FILE = "augment_failures.parquet"
RUN_LEDGER_FILE = "ledger.parquet"  # this run's ledger rows, beside its outputs


class BatchFailed(RuntimeError):
    """Some items of a batch stayed unanswered or invalid after retries and re-asks."""


def batch_ref(params: Mapping[str, Any]) -> ArtifactRef:
    """The output address of one batch: only what changes the answers is part of the key."""
    llm: LLMConfig = params["llm"]
    augment: AugmentConfig = params["augment"]
    keyed = {
        "stage": params["stage"],
        "ids": list(params["ids"]),
        "template": TEMPLATES[params["stage"]],
        "model": llm.model,
        "sampling": [llm.temperature, llm.top_p, llm.max_tokens, llm.max_reasks],
        "history": augment.max_history,
        "items_per_request": augment.items_per_request if params["stage"] == "attributes" else None,
        "inputs": [params["dataset_ref"], params["split_ref"], params["candidates_ref"]],
    }
    stage = f"augment-{params['stage']}"
    return ArtifactRef(stage, content_key(stage, STAGE_VERSION, keyed))


def llm_cache_dir(store_root: str, llm: LLMConfig) -> Path:
    return Path(llm.cache_dir) if llm.cache_dir else Path(store_root) / "llm-cache"


def _ledger_row(event: UsageEvent, flow_run_id: str) -> dict[str, Any]:
    return {**event.to_row(), "flow_run_id": flow_run_id}


def _user_inputs(store: ArtifactStore, ids: list[int], dataset_ref: str, split_ref: str, candidates_ref: str,
                 max_history: int | None) -> list[Any]:
    split, _ = read_split(store, split_ref)
    items = store.read_table(dataset_ref, "items")
    candidates = store.read_table(candidates_ref, "candidates")
    # Only TRAINING interactions ever reach a prompt: valid/test are not even passed in.
    return build_user_contexts(split.train, items, candidates, ids, max_history)


def _item_inputs(store: ArtifactStore, ids: list[int], dataset_ref: str) -> list[ItemText]:
    return list(item_texts(store.read_table(dataset_ref, "items"), ids).values())


@stage_task(batch_ref, name="augment-batch", task_run_name="{stage}-batch-{batch}")
def augment_batch(store_root: str, stage: str, batch: int, ids: list[int], dataset_ref: str, split_ref: str,
                  candidates_ref: str, llm: LLMConfig, augment: AugmentConfig, ledger_root: str,
                  n_batches: int | None = None) -> str:
    """Ask the LLM for one batch (number `batch` of the stage's `n_batches`, for the logs; neither is in its key);
    write its validated rows and its failures; fail the run if any item failed."""
    store = ArtifactStore(store_root)
    params = {"stage": stage, "ids": ids, "dataset_ref": dataset_ref, "split_ref": split_ref,
              "candidates_ref": candidates_ref, "llm": llm, "augment": augment}
    ref = batch_ref(params)
    logger = get_run_logger()
    run_id = str(flow_run.id or "no-flow-run")
    tags = {"stage": stage, "batch": str(batch)}
    with (
        LedgerWriter(ledger_root, run_id, f"{stage}-{batch:05d}-{uuid.uuid4().hex[:8]}",
                     flow_run_name=flow_run.name) as ledger,
        LLMClient(llm, cache_dir=llm_cache_dir(store_root, llm),
                  usage_sink=lambda e: ledger.append(_ledger_row(e, run_id)),
                  before_request=prefect_rate_limit_hook(llm.prefect_rate_limit)) as client,
    ):
        common = {"max_reasks": llm.max_reasks, "max_workers": llm.max_in_flight, "tags": tags}
        if stage == "attributes":
            outcomes = augment_attributes(client, _item_inputs(store, ids, dataset_ref),
                                          items_per_request=augment.items_per_request, **common)
        else:
            users = _user_inputs(store, ids, dataset_ref, split_ref, candidates_ref, augment.max_history)
            fn = augment_edges if stage == "edges" else augment_profiles
            outcomes = fn(client, users, **common)
    failures = failures_frame(outcomes, stage)
    with store.write(ref.stage, ref.key, params, replace=True) as w:
        w.table("rows", FRAMES[stage](outcomes, llm.model))
        w.table("failures", failures)
        w.json("summary", {"stage": stage, "batch": batch, "items": len(outcomes), "failed": len(failures)})
    which = f"{stage} batch {batch}" + (f" of {n_batches}" if n_batches else "")
    if len(failures):
        reasons = "; ".join(f"{k}: {r}" for k, r in zip(failures["key"][:3], failures["reason"][:3], strict=False))
        raise BatchFailed(f"{which}: {len(failures)} of {len(outcomes)} items failed ({reasons})")
    logger.info("%s: %d items answered", which, len(outcomes))
    return str(ref)


@task(name="plan-batches")
def plan_batches(store_root: str, stage: str, dataset_ref: str, split_ref: str, candidates_ref: str,
                 augment: AugmentConfig) -> list[list[int]]:
    """Users with training data (and, for edges, at least two candidates) or all items, in fixed-size batches."""
    store = ArtifactStore(store_root)
    if stage == "attributes":
        ids = sorted(int(i) for i in store.read_table(dataset_ref, "items")["item_id"])
        size = augment.items_per_batch
    else:
        split, _ = read_split(store, split_ref)
        ids = sorted(int(u) for u in split.train["user_id"].unique())
        if stage == "edges":  # a pick of liked and disliked needs two candidates; others cannot be asked at all
            cands = store.read_table(candidates_ref, "candidates")
            per_user = cands.groupby("user_id").size()
            ids = [u for u in ids if per_user.get(u, 0) >= 2]
        size = augment.users_per_batch
    return [ids[i:i + size] for i in range(0, len(ids), size)]


@task(name="collect-stage", cache_policy=NO_CACHE)
def collect_stage(store_root: str, stage: str, batch_refs: list[str], out_dir: str | None) -> tuple[int, pd.DataFrame]:
    """The union of the batches' rows, written to `<out_dir>/<OUTPUT_FILES[stage]>`, and of their failures; returns
    the number of rows and the failures (batches never written are skipped)."""
    store = ArtifactStore(store_root)
    written = [r for r in batch_refs if store.exists(r)]
    rows = [store.read_table(r, "rows") for r in written]
    fails = [store.read_table(r, "failures") for r in written]
    frame = pd.concat(rows, ignore_index=True) if rows else FRAMES[stage]([], "")
    if out_dir:
        write_parquet(Path(out_dir) / OUTPUT_FILES[stage], frame)
    return len(frame), pd.concat(fails, ignore_index=True) if fails else failures_frame([], stage)


@task(name="close-run", cache_policy=NO_CACHE)
def close_run(ledger_root: str, flow_run_id: str, failures: pd.DataFrame, max_cost_usd: float | None,
              out_dir: str | None) -> float:
    """The end of an augment run: its failed items and its ledger rows written to `out_dir`, and its cost published
    as Prefect artifacts (tasks/cost.py); returns what the run spent, in USD."""
    rows = read_ledger(ledger_root, flow_run_id=flow_run_id)
    if out_dir:
        write_parquet(Path(out_dir) / FAILURES_FILE, failures)
        write_parquet(Path(out_dir) / RUN_LEDGER_FILE, rows)
    return publish_cost(rows, failures, max_cost_usd, ledger_root)
