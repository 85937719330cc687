"""Prefect tasks for LLM augmentation: one task run per batch of users or items, keyed on its content.

A batch's key covers the stage, the ids in the batch, the prompt-template version, the model and the sampling
parameters, the candidate order and its seed, the prompt token budget, and the keys of the data it reads. A
finished batch is served from its persisted result on any later run; a batch with failed items writes what
succeeded, then fails its task run, and a re-run asks again only for what is not in the response cache (the failed
items). The Batch API mode's own tasks are in tasks/batch_api.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from recsys.augment.attributes import augment_attributes
from recsys.augment.edges import augment_edges
from recsys.augment.parse import answer_schema
from recsys.augment.profiles import augment_profiles
from recsys.augment.prompts import (
    ATTRIBUTES_VERSION,
    EDGES_VERSION,
    PROFILES_VERSION,
    ItemText,
    Messages,
    UserContext,
    build_user_contexts,
    edges_skip_reason,
    item_skip_reason,
    item_texts,
    profile_skip_reason,
    sanitize,
)
from recsys.augment.runner import (
    ChatClient,
    ItemOutcome,
    attributes_frame,
    edges_frame,
    failed,
    failures_frame,
    profiles_frame,
)
from recsys.config import AugmentConfig, LLMConfig
from recsys.data.errors import DataError
from recsys.llm.batch import DeferredChat, merge_results, read_results
from recsys.llm.client import LLMClient, UsageEvent
from recsys.llm.tokens import count_message_tokens, model_encoding
from storage.atomic import write_parquet
from storage.batch_jobs import BatchJob
from storage.keys import content_key
from storage.ledger import LedgerWriter, read_ledger
from storage.store import ArtifactRef, ArtifactStore
from tasks.common import read_split, stage_task
from tasks.cost import publish_cost
from tasks.ratelimit import prefect_rate_limit_hook

TEMPLATES = {"edges": EDGES_VERSION, "profiles": PROFILES_VERSION, "attributes": ATTRIBUTES_VERSION}
STAGE_VERSION = "2"  # 2: edges rows gain pos_rank / neg_rank, rows and failures history_cut
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
        "candidate_order": candidate_seed(augment) if params["stage"] == "edges" else None,
        "max_prompt_tokens": getattr(augment.max_prompt_tokens, params["stage"]),
        "inputs": [params["dataset_ref"], params["split_ref"], params["candidates_ref"]],
    }
    stage = f"augment-{params['stage']}"
    return ArtifactRef(stage, content_key(stage, STAGE_VERSION, keyed))


def candidate_seed(augment: AugmentConfig) -> int | None:
    """The seed of the per-user candidate order, None for the base model's order."""
    return augment.candidate_seed if augment.candidate_order == "shuffled" else None


def llm_cache_dir(store_root: str, llm: LLMConfig) -> Path:
    return Path(llm.cache_dir) if llm.cache_dir else Path(store_root) / "llm-cache"


def stage_schema(stage: str) -> tuple[str, dict[str, Any]]:
    """(name, JSON schema) of an augmentation stage's answer, sent as structured outputs."""
    return f"{stage}_answer", answer_schema(stage)


def stage_client(store_root: str, stage: str, llm: LLMConfig, **options: Any) -> LLMClient:
    """The chat client of one stage: the store's response cache, the stage's answer schema for structured
    outputs; `options` go to LLMClient (usage_sink, before_request)."""
    return LLMClient(llm, cache_dir=llm_cache_dir(store_root, llm), answer_schema=stage_schema(stage), **options)


def token_counter(model: str) -> Callable[[Messages], int]:
    """Prompt tokens of messages in `model`'s tokenizer (recsys/llm/tokens.py: model_encoding)."""
    enc = model_encoding(model)[0]
    return lambda messages: count_message_tokens(messages, enc)


def _ledger_row(event: UsageEvent, flow_run_id: str) -> dict[str, Any]:
    return {**event.to_row(), "flow_run_id": flow_run_id}


def _user_inputs(store: ArtifactStore, ids: list[int], dataset_ref: str, split_ref: str, candidates_ref: str,
                 augment: AugmentConfig) -> list[UserContext]:
    split, _ = read_split(store, split_ref)
    items = store.read_table(dataset_ref, "items")
    candidates = store.read_table(candidates_ref, "candidates")
    # Only TRAINING interactions ever reach a prompt: valid/test are not even passed in. Their timestamps and
    # ratings (from the dataset) decide which history items a prompt keeps when it must be cut.
    extra = store.read_table(dataset_ref, "interactions")[["user_id", "item_id", "timestamp", "rating"]]
    train = split.train.merge(extra.drop_duplicates(["user_id", "item_id"], keep="last"), how="left",
                              on=["user_id", "item_id"])
    return build_user_contexts(train, items, candidates, ids, augment.max_history, candidate_seed(augment))


def _item_inputs(store: ArtifactStore, ids: list[int], dataset_ref: str) -> list[ItemText]:
    return list(item_texts(store.read_table(dataset_ref, "items"), ids).values())


def stage_outcomes(client: ChatClient, store: ArtifactStore, stage: str, ids: list[int], refs: Mapping[str, str],
                   llm: LLMConfig, augment: AugmentConfig, tags: dict[str, str]) -> list[ItemOutcome]:
    """One outcome per id of `stage`, asked through `client` under the stage's prompt token budget."""
    common = {"max_reasks": llm.max_reasks, "max_workers": llm.max_in_flight, "tags": tags,
              "max_prompt_tokens": getattr(augment.max_prompt_tokens, stage), "count": token_counter(llm.model)}
    if stage == "attributes":
        return augment_attributes(client, _item_inputs(store, ids, refs["dataset"]),
                                  items_per_request=augment.items_per_request, **common)
    users = _user_inputs(store, ids, refs["dataset"], refs["split"], refs["candidates"], augment)
    return (augment_edges if stage == "edges" else augment_profiles)(client, users, **common)


def batch_results(jobs: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(answer, error) by cache key from the downloaded results of Batch API jobs, later jobs winning."""
    results = []
    for folder in jobs:
        for text in BatchJob(folder).results():
            results += read_results(text)
    return merge_results(results)


@contextmanager
def batch_client(store_root: str, llm: LLMConfig, ledger_root: str, stage: str, batch: int,
                 schema: tuple[str, dict[str, Any]] | None = None) -> Iterator[LLMClient]:
    """The LLM client of one batch task run: the store's response cache, the answer `schema` as structured outputs
    (None: no response_format), the Prefect rate limit, and a usage sink writing every call to the run's ledger (a
    part file of its own, `<stage>-<batch>-<unique>`)."""
    run_id = str(flow_run.id or "no-flow-run")
    with (
        LedgerWriter(ledger_root, run_id, f"{stage}-{batch:05d}-{uuid.uuid4().hex[:8]}",
                     flow_run_name=flow_run.name) as ledger,
        LLMClient(llm, cache_dir=llm_cache_dir(store_root, llm), answer_schema=schema,
                  usage_sink=lambda e: ledger.append(_ledger_row(e, run_id)),
                  before_request=prefect_rate_limit_hook(llm.prefect_rate_limit)) as client,
    ):
        yield client


def write_batch(store: ArtifactStore, ref: ArtifactRef, params: Mapping[str, Any], stage: str, batch: int,
                rows: pd.DataFrame, outcomes: list[ItemOutcome], n_batches: int | None = None) -> None:
    """Write a batch's validated `rows` and its failed items (replacing what an earlier attempt wrote); raise
    `BatchFailed` when an item failed, so that the task run fails and a re-run asks again."""
    failures = failures_frame(outcomes, stage)
    with store.write(ref.stage, ref.key, params, replace=True) as w:
        w.table("rows", rows)
        w.table("failures", failures)
        w.json("summary", {"stage": stage, "batch": batch, "items": len(outcomes), "failed": len(failures)})
    which = f"{stage} batch {batch}" + (f" of {n_batches}" if n_batches else "")
    if len(failures):
        reasons = "; ".join(f"{k}: {r}" for k, r in zip(failures["key"][:3], failures["reason"][:3], strict=False))
        raise BatchFailed(f"{which}: {len(failures)} of {len(outcomes)} items failed ({reasons})")
    get_run_logger().info("%s: %d items answered", which, len(outcomes))


@stage_task(batch_ref, name="augment-batch", task_run_name="{stage}-batch-{batch}")
def augment_batch(store_root: str, stage: str, batch: int, ids: list[int], dataset_ref: str, split_ref: str,
                  candidates_ref: str, llm: LLMConfig, augment: AugmentConfig, ledger_root: str,
                  batch_jobs: list[str] | None = None, n_batches: int | None = None) -> str:
    """Ask the LLM for one batch (number `batch` of the stage's `n_batches`, for the logs; neither is in its key);
    write its validated rows and its failures; fail the run if any item failed.

    In batch mode (`batch_jobs`: the Batch API jobs of this stage), answers come from those jobs' results and the
    response cache; what they lack fails, or, with `augment.batch_followup` "normal", is asked by normal requests.
    """
    store = ArtifactStore(store_root)
    params = {"stage": stage, "ids": ids, "dataset_ref": dataset_ref, "split_ref": split_ref,
              "candidates_ref": candidates_ref, "llm": llm, "augment": augment}
    ref = batch_ref(params)
    tags = {"stage": stage, "batch": str(batch)}
    refs = {"dataset": dataset_ref, "split": split_ref, "candidates": candidates_ref}
    with batch_client(store_root, llm, ledger_root, stage, batch, stage_schema(stage)) as client:
        asker: ChatClient = client
        if batch_jobs is not None:
            answers, errors = batch_results(batch_jobs)
            asker = DeferredChat(client, answers, errors, http=augment.batch_followup == "normal",
                                 rounds=len(batch_jobs))
        outcomes = stage_outcomes(asker, store, stage, ids, refs, llm, augment, tags)
    write_batch(store, ref, params, stage, batch, FRAMES[stage](outcomes, llm.model), outcomes, n_batches)
    return str(ref)


def sample_ids(ids: list[int], n: int | None, seed: int) -> list[int]:
    """A seeded sample of `n` ids (sorted), or all of them when `n` is None or not smaller."""
    if n is None or n >= len(ids):
        return ids
    return sorted(int(i) for i in np.random.default_rng(seed).choice(np.asarray(ids, dtype="int64"), n,
                                                                      replace=False))


def require_item_text(store: ArtifactStore, dataset_ref: str, *, every_item: bool = False) -> None:
    """Stop before the first LLM call when no item of the dataset has text (every prompt would show bare ids, and
    every answer would be invented), or, with `every_item` (Llama4Rec's ranking, which shows every item of a
    list), when any interacted item has none. A DataError says how many items lack text, one of them, and how to
    pass text."""
    items = store.read_table(dataset_ref, "items")
    if every_item:  # only interacted items reach a backbone's list
        items = items[items["item_id"].isin(store.read_table(dataset_ref, "interactions")["item_id"])]
    missing = items["title"].map(sanitize).eq("")
    n = int(missing.sum())
    if n and (every_item or n == len(items)):
        info = store.read_json(dataset_ref, "info")
        why = ("the LLM ranks lists of items by their text, so each needs a title" if every_item and n < len(items)
               else "the LLM would see item ids only")
        raise DataError(f"{n} of {len(items)} items of dataset {info['name']!r} have no text (no title; e.g. item "
                        f"{int(items.loc[missing, 'item_id'].iat[0])}), so {why}; pass an item table with --items "
                        "FILE (Parquet or CSV with item_id, title[, year, genres, description]) to `llmrec augment`, "
                        "`run` or `llama4rec`, or put items.csv beside interactions.csv", path=info.get("source"))


@task(name="plan-batches")
def plan_batches(store_root: str, stage: str, dataset_ref: str, split_ref: str, candidates_ref: str,
                 augment: AugmentConfig) -> tuple[list[list[int]], pd.DataFrame]:
    """Users with training data or all items, in fixed-size batches, and the users or items that cannot be asked
    at all (recsys/augment/prompts.py: `*_skip_reason`), as failure rows with the reason, asked 0 times: they go to
    augment_failures and never to the model. For a trial, a seeded sample of `sample_users` users or
    `sample_items` items first (the same users in every stage)."""
    store = ArtifactStore(store_root)
    if stage == "attributes":
        ids = sorted(int(i) for i in store.read_table(dataset_ref, "items")["item_id"])
        items = _item_inputs(store, sample_ids(ids, augment.sample_items, augment.sample_seed), dataset_ref)
        reasons = {i.item_id: item_skip_reason(i) for i in items}
        size = augment.items_per_batch
    else:
        split, _ = read_split(store, split_ref)
        users = sorted(int(u) for u in split.train["user_id"].unique())
        users = sample_ids(users, augment.sample_users, augment.sample_seed)
        reason_of = edges_skip_reason if stage == "edges" else profile_skip_reason
        contexts = _user_inputs(store, users, dataset_ref, split_ref, candidates_ref, augment)
        reasons = {c.user_id: reason_of(c) for c in contexts}
        size = augment.users_per_batch
    ids = [k for k, why in reasons.items() if why is None]
    skipped = failures_frame([failed(k, f"not asked: {why}") for k, why in reasons.items() if why is not None], stage)
    return [ids[i:i + size] for i in range(0, len(ids), size)], skipped


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
