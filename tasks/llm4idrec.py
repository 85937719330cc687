"""Prefect tasks of LLM4IDRec: fine-tuning samples, fine-tuning (local LoRA, or a hosted job whose cost goes to the
ledger), generation with parsing (in-process, or batches of chat calls to the fine-tuned model) and the augmented
split (set-wise merge, optional base-rank filter). Each writes one content-keyed artifact."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger
from prefect.runtime import flow_run

from recsys.augment.runner import ItemOutcome
from recsys.config import EndpointConfig, LLM4IDRecConfig, LLMConfig, ModelConfig
from recsys.llm.batch import BatchAPI
from recsys.llm.client import UsageEvent
from recsys.llm.pricing import load_price_table
from recsys.llm4idrec.hosted import (
    generate_hosted,
    hyperparameters,
    start_job,
    trained_tokens_estimate,
    wait_job,
)
from recsys.llm4idrec.jsonl import holdout_users, to_jsonl
from recsys.llm4idrec.lora import adapter_tensors, attach_lora, generate, load_adapter, load_base, train_lora
from recsys.llm4idrec.merge import base_rank_filter, merge_setwise, score_ranks
from recsys.llm4idrec.parse import DROP_REASONS, parse_generation
from recsys.llm4idrec.prompts import cut_history, item_list, prompt_text
from recsys.llm4idrec.samples import full_list_samples, prefix_samples, training_histories
from storage.fine_tune_jobs import fine_tune_job
from storage.keys import files_fingerprint
from storage.ledger import LedgerWriter
from storage.store import ArtifactRef, ArtifactStore
from tasks.augment import batch_client, write_batch
from tasks.common import read_dense_split, read_split, stage_ref, stage_task
from tasks.train import load_trained

RECORD_COLUMNS = ("user_id", "part", "prompt", "target")
GENERATION_FIELDS = ("temperature", "top_p", "max_new_tokens", "seed", "max_prompt_tokens")
HOSTED_FIELDS = ("base_model", "batch_size", "grad_accumulation", "max_steps", "seed")  # what a hosted job uses
FINETUNE_STAGE = "llm4idrec-finetune"  # the ledger's stage of a hosted fine-tuning job
GENERATE_STAGE = "llm4idrec-generate"  # the ledger's stage of hosted generation calls


class BudgetExceeded(RuntimeError):
    """A hosted fine-tuning job would cost more than what is left of the run's budget; nothing was created."""


def chosen_users(histories: dict[int, tuple[int, ...]], config: LLM4IDRecConfig) -> list[int]:
    """Users with >= min_items training items; a seeded `sample_users` of them when set (sorted)."""
    users = [u for u in sorted(histories) if len(histories[u]) >= config.min_items]
    if config.sample_users is not None and config.sample_users < len(users):
        rng = np.random.default_rng(config.sample_seed)
        users = sorted(int(u) for u in rng.choice(users, config.sample_users, replace=False))
    return users


def samples_artifact(params: Mapping[str, Any]) -> ArtifactRef:
    """The samples' address: the split and the sampling fields of the config (not the fine-tuning ones)."""
    return stage_ref("llm4idrec-data", {"split_ref": params["split_ref"], "config": _sample_fields(params["config"])})


def lora_artifact(params: Mapping[str, Any]) -> ArtifactRef:
    """The adapter's address: samples, every config field but where the base model lies and the device, and
    the base model files' names and bytes."""
    config = params["config"].model_dump(mode="json", exclude={"base_model", "device"})
    return stage_ref("llm4idrec-lora", {"data_ref": params["data_ref"], "config": config,
                                        "base_files": params["base_files"]})


def generate_artifact(params: Mapping[str, Any]) -> ArtifactRef:
    """The generation's address: split, samples, adapter and the sampling settings."""
    config = {k: getattr(params["config"], k) for k in GENERATION_FIELDS}
    return stage_ref("llm4idrec-generate", {k: params[k] for k in ("split_ref", "data_ref", "lora_ref")}
                     | {"config": config})


@stage_task(samples_artifact, name="llm4idrec-data")
def prepare_samples(store_root: str, split_ref: str, config: LLM4IDRecConfig) -> str:
    """Fine-tuning records from TRAINING pairs only: table `records` (user_id, part train/valid, prompt, target)."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "config": _sample_fields(config)}
    ref = samples_artifact({"split_ref": split_ref, "config": config})
    split, _ = read_split(store, split_ref)
    histories = training_histories(split.train)
    users = chosen_users(histories, config)
    chosen = {u: histories[u] for u in users}
    samples = []
    if config.samples in ("prefix", "both"):
        samples += prefix_samples(chosen, per_user=config.prefixes_per_user, min_items=config.min_items,
                                  seed=config.sample_seed)
    if config.samples in ("full", "both"):
        samples += full_list_samples(chosen, min_items=config.min_items)
    held = holdout_users(users, config.holdout_share, config.sample_seed)
    rows = [(s.user_id, "valid" if s.user_id in held else "train",
             prompt_text(s.user_id, cut_history(s.user_id, s.history, config.max_prompt_tokens)),
             item_list(s.target)) for s in samples]
    records = pd.DataFrame(rows, columns=list(RECORD_COLUMNS)).astype({"user_id": "int64"})
    with store.write(ref.stage, ref.key, params) as w:
        w.table("records", records)
    get_run_logger().info("llm4idrec samples: %d users, %d records (%d held out)", len(users), len(records),
                          int((records["part"] == "valid").sum()))
    return str(ref)


def _sample_fields(config: LLM4IDRecConfig) -> dict:
    keep = ("samples", "prefixes_per_user", "min_items", "sample_seed", "max_prompt_tokens", "holdout_share",
            "sample_users")
    return {k: getattr(config, k) for k in keep}


def chat_records(records: pd.DataFrame, part: str) -> list[dict]:
    rows = records[records["part"] == part]
    return [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": t}]}
            for p, t in zip(rows["prompt"], rows["target"], strict=True)]


def base_model_files(config: LLM4IDRecConfig) -> list:
    from pathlib import Path

    path = Path(config.base_model).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.is_file()) if path.is_dir() else []
    return files_fingerprint(files)


@stage_task(lora_artifact, name="llm4idrec-lora")
def finetune_local(store_root: str, data_ref: str, config: LLM4IDRecConfig, base_files: list) -> str:
    """LoRA fine-tuning (recsys/llm4idrec/lora.py): tensors `adapter`, table `loss` (step, loss, lr, seconds),
    json `fit`. `base_files`: the base model files' fingerprint (what its key covers, not where it lies)."""
    store = ArtifactStore(store_root)
    params = {"data_ref": data_ref, "config": config.model_dump(mode="json", exclude={"base_model", "device"}),
              "base_files": base_files}
    ref = lora_artifact({"data_ref": data_ref, "config": config, "base_files": base_files})
    logger = get_run_logger()
    records = store.read_table(data_ref, "records")
    model, tokenizer = load_base(config.base_model, config.device)
    peft_model = attach_lora(model, config)
    logs = train_lora(peft_model, tokenizer, chat_records(records, "train"), config,
                      on_step=lambda s: logger.info("step %d: loss %.4f (%.1f s)", s.step, s.loss, s.seconds))
    loss = pd.DataFrame([vars(s) for s in logs])
    with store.write(ref.stage, ref.key, params) as w:
        w.tensors("adapter", adapter_tensors(peft_model))
        w.table("loss", loss)
        w.json("fit", {"steps": len(logs), "seconds_per_step": float(loss["seconds"].median()),
                       "device": str(next(peft_model.parameters()).device)})
    return str(ref)


@stage_task(generate_artifact, name="llm4idrec-generate")
def generate_items(store_root: str, split_ref: str, data_ref: str, lora_ref: str, config: LLM4IDRecConfig) -> str:
    """Generate for every sampled user from its whole (cut) training history; parse the answers. Tables
    `generated` (user_id, item_id), `answers` (user_id, text); json `summary`: pieces and drops per reason, and
    the share of kept items that are the user's held-out VALID items beside a random and a most-popular pick of
    the same number per user (a diagnostic; no choice is made on it)."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "data_ref": data_ref, "lora_ref": lora_ref,
              "config": {k: getattr(config, k) for k in GENERATION_FIELDS}}
    ref = generate_artifact({**params, "config": config})
    split, ids = read_split(store, split_ref)
    histories = training_histories(split.train)
    users = sorted(int(u) for u in store.read_table(data_ref, "records")["user_id"].unique())
    model, tokenizer = load_base(config.base_model, config.device)
    model = load_adapter(model, store.read_tensors(lora_ref, "adapter"), config)
    prompts = [prompt_text(u, cut_history(u, histories[u], config.max_prompt_tokens)) for u in users]
    texts = generate(model, tokenizer, prompts, config)
    write_generation(store, ref, params, split, ids, histories, users, texts, config.seed)
    return str(ref)


def write_generation(store: ArtifactStore, ref: ArtifactRef, params: Mapping[str, Any], split, ids,
                     histories: dict[int, tuple[int, ...]], users: list[int], texts: list[str], seed: int) -> None:
    """Parse each user's generated text against its training `histories` and write the generation artifact (see
    `generate_items`)."""
    catalogue = set(int(i) for i in ids.item_ids)
    kept, drops, pieces = [], dict.fromkeys(DROP_REASONS, 0), 0
    for u, text in zip(users, texts, strict=True):
        parsed = parse_generation(text, set(histories[u]), catalogue)
        kept += [(u, i) for i in parsed.items]
        pieces += parsed.pieces
        for reason, n in parsed.dropped.items():
            drops[reason] += n
    generated = pd.DataFrame(kept, columns=["user_id", "item_id"], dtype="int64")
    summary = {"users": len(users), "pieces": pieces, "kept": len(generated), "dropped": drops,
               **pick_shares(generated, split, users, histories, catalogue, seed)}
    with store.write(ref.stage, ref.key, params) as w:
        w.table("generated", generated)
        w.table("answers", pd.DataFrame({"user_id": users, "text": texts}))
        w.json("summary", summary)
    get_run_logger().info("llm4idrec generation: %s", summary)


def pick_shares(generated: pd.DataFrame, split, users: list[int], histories: dict, catalogue: set[int],
                seed: int) -> dict[str, float]:
    """Share of generated items that are the user's VALID items, and the same for a random and a most-popular
    (by training count) pick of as many items per user, both among items not in the user's history."""
    valid = set(zip(split.valid["user_id"].astype(int), split.valid["item_id"].astype(int), strict=True))
    popular = split.train["item_id"].value_counts().index.astype(int).tolist()
    pool = np.array(sorted(catalogue), dtype=np.int64)
    rng = np.random.default_rng(seed)
    counts = generated.groupby("user_id").size().to_dict()
    hits = {"generated": 0, "random": 0, "popular": 0}
    for u in users:
        n, seen = int(counts.get(u, 0)), set(histories[u])
        if not n:
            continue
        candidates = pool[~np.isin(pool, list(seen))]
        picks = {"generated": generated.loc[generated["user_id"] == u, "item_id"].tolist(),
                 "random": rng.choice(candidates, min(n, candidates.size), replace=False).tolist(),
                 "popular": [i for i in popular if i not in seen][:n]}
        for name, items in picks.items():
            hits[name] += sum((u, int(i)) in valid for i in items)
    total = max(len(generated), 1)
    return {f"valid_share_{name}": hits[name] / total for name in hits}


@stage_task("llm4idrec-split", name="llm4idrec-split")
def augmented_split(store_root: str, split_ref: str, gen_ref: str, max_base_rank: int | None,
                    base_ref: str | None, base_model: ModelConfig | None) -> str:
    """The split with generated pairs merged into TRAIN as sets (valid, test and id maps unchanged): a new,
    content-keyed dataset version. With `max_base_rank`, only pairs the base model (`base_ref`) ranks in the
    user's top `max_base_rank` are merged. json `merge`: generated, kept by the filter, added."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "gen_ref": gen_ref, "max_base_rank": max_base_rank, "base_ref": base_ref,
              "base_model": base_model}
    ref = stage_ref("llm4idrec-split", params)
    split, ids = read_split(store, split_ref)
    generated = store.read_table(gen_ref, "generated")
    n_generated = len(generated)
    if max_base_rank is not None:
        if base_ref is None or base_model is None:
            raise ValueError("the base-rank filter needs base_ref and base_model")
        data, _ = read_dense_split(store, split_ref)
        net = load_trained(store, base_ref, base_model, data, "cpu")
        with torch.no_grad():
            scores = net.full_scores(torch.arange(data.n_users)).numpy()
        mask = np.zeros(scores.shape, bool)
        mask[data.train[:, 0], data.train[:, 1]] = True
        dense = generated.assign(uid=ids.users_to_dense(generated["user_id"].to_numpy()),
                                 iid=ids.items_to_dense(generated["item_id"].to_numpy()))
        generated = base_rank_filter(dense, score_ranks(scores, mask), max_base_rank)
    merged, added = merge_setwise(split.train, generated)
    users, items = ids.to_frames()
    with store.write(ref.stage, ref.key, params) as w:
        w.table("train", merged)
        w.table("valid", split.valid[["user_id", "item_id"]].astype("int64").reset_index(drop=True))
        w.table("test", split.test[["user_id", "item_id"]].astype("int64").reset_index(drop=True))
        w.table("user_map", users)
        w.table("item_map", items)
        w.json("merge", {"generated": n_generated, "after_filter": len(generated), "added": added,
                         "train_before": len(split.train), "train_after": len(merged)})
    get_run_logger().info("llm4idrec merge: %d generated, %d after filter, %d new pairs", n_generated,
                          len(generated), added)
    return str(ref)


# ---- the hosted backend ------------------------------------------------------------------------------------------

def _hosted_fields(config: LLM4IDRecConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in HOSTED_FIELDS}


def job_artifact(params: Mapping[str, Any]) -> ArtifactRef:
    """The hosted job's address: the samples, the config fields a hosted job uses (HOSTED_FIELDS) and the
    endpoint's URL (never its key). The job's record (storage/fine_tune_jobs.py) lives under the same key."""
    return stage_ref("llm4idrec-job", {"data_ref": params["data_ref"], "config": _hosted_fields(params["config"]),
                                       "base_url": params["base_url"]})


def check_job_budget(training: str, n_epochs: int, model: str, price_table: Any,
                     budget_left_usd: float | None) -> tuple[int, float | None]:
    """(estimated trained tokens, estimated USD or None when the model has no training price) of a job; raises
    BudgetExceeded when the estimate is more than `budget_left_usd` (None: no budget)."""
    tokens = trained_tokens_estimate(training, n_epochs)
    usd = load_price_table(price_table).training_cost(model, tokens)
    if budget_left_usd is not None and usd is not None and usd > budget_left_usd:
        raise BudgetExceeded(f"a fine-tuning job on {model} would train about {tokens:,} tokens ({n_epochs} "
                             f"epoch{'s' if n_epochs > 1 else ''}) for about ${usd:.4f}, more than the "
                             f"${budget_left_usd:.4f} left of this run's budget; no job was created")
    return tokens, usd


def bill_job(record: Any, ledger_root: str, model: str, price_table: Any) -> float | None:
    """Write an ended job's one ledger row, once per job id: stage FINETUNE_STAGE, mode "fine-tune", the job id as
    `batch`, its trained tokens as prompt_tokens, USD from the table's training price (0 for a failed or cancelled
    job, which is not billed). Returns its USD (None: unpriced)."""
    rec = record.record()
    job_id, status = rec.get("job_id"), rec.get("status")
    if not job_id or status not in ("succeeded", "failed", "cancelled") or job_id in rec.get("billed_jobs", []):
        return rec.get("cost_usd")
    tokens = int(rec.get("trained_tokens") or 0) if status == "succeeded" else 0
    usd = load_price_table(price_table).training_cost(model, tokens) if tokens else 0.0
    run_id = str(flow_run.id or "no-flow-run")
    event = UsageEvent(timestamp=time.time(), model=model, prompt_tokens=tokens, completion_tokens=0, cached=False,
                       latency_s=0.0, attempt=1, outcome="ok" if status == "succeeded" else status, cost_usd=usd,
                       mode="fine-tune", stage=FINETUNE_STAGE, batch=str(job_id), error=rec.get("error"))
    with LedgerWriter(ledger_root, run_id, FINETUNE_STAGE, flow_run_name=flow_run.name) as ledger:
        ledger.append({**event.to_row(), "flow_run_id": run_id})
    record.update(billed_jobs=[*rec.get("billed_jobs", []), job_id], cost_usd=usd)
    return usd


@stage_task(job_artifact, name="llm4idrec-finetune-hosted")
def finetune_hosted(store_root: str, data_ref: str, config: LLM4IDRecConfig, endpoint: EndpointConfig,
                    base_url: str, ledger_root: str, budget_left_usd: float | None = None) -> str:
    """A fine-tuning job on `config.base_model` at the endpoint, from the samples' train records (held-out records
    as the validation file), `hyperparameters` from the paper's steps and batch size. Before a job is created, its
    estimated cost is checked against `budget_left_usd` (BudgetExceeded). The job id is persisted first
    (recsys/llm4idrec/hosted.py), so a re-run after a crash resumes polling the same job; the ended job is one
    ledger row. json `job`: job_id, fine_tuned_model, trained_tokens, cost_usd, hyperparameters. Raises
    FineTuneFailed when the job fails (a re-run creates a new one)."""
    store = ArtifactStore(store_root)
    params = {"data_ref": data_ref, "config": _hosted_fields(config), "base_url": base_url}
    ref = job_artifact({**params, "config": config})
    logger = get_run_logger()
    records = store.read_table(data_ref, "records")
    training, validation = (to_jsonl(chat_records(records, part)) for part in ("train", "valid"))
    hyper = hyperparameters(int((records["part"] == "train").sum()), config.batch_size * config.grad_accumulation,
                            config.max_steps)
    record = fine_tune_job(store_root, ref.key)
    rec = record.record()
    if not rec.get("job_id") or rec.get("status") in ("failed", "cancelled"):
        tokens, usd = check_job_budget(training, hyper["n_epochs"], config.base_model, endpoint.price_table,
                                       budget_left_usd)
        logger.info("fine-tuning job on %s: about %d trained tokens, %s", config.base_model, tokens,
                    "unpriced" if usd is None else f"about ${usd:.4f}")
    api = BatchAPI(endpoint)
    try:
        job_id = start_job(api.client, record, training, validation or None, model=config.base_model,
                           hyperparameters=hyper, suffix="llm4idrec", seed=config.seed, call=api.call)
        logger.info("fine-tuning job %s (record %s)", job_id, record.folder)
        try:
            job = wait_job(api.client, record, poll_s=config.poll_s, poll_max_s=config.poll_max_s, call=api.call,
                           on_status=lambda j: logger.info("fine-tuning job %s: %s", j.id, j.status))
        finally:
            bill_job(record, ledger_root, config.base_model, endpoint.price_table)
    finally:
        api.close()
    rec = record.record()
    with store.write(ref.stage, ref.key, params) as w:
        w.json("job", {"job_id": job.id, "fine_tuned_model": job.fine_tuned_model,
                       "trained_tokens": rec.get("trained_tokens"), "cost_usd": rec.get("cost_usd"),
                       "hyperparameters": hyper, "base_model": config.base_model})
    logger.info("fine-tuned model %s (%s trained tokens)", job.fine_tuned_model, rec.get("trained_tokens"))
    return str(ref)


def answers_artifact(params: Mapping[str, Any]) -> ArtifactRef:
    """A hosted generation batch's address: its users, the split, the fine-tuned model, the sampling settings."""
    llm: LLMConfig = params["llm"]
    return stage_ref("llm4idrec-answers", {"ids": list(params["ids"]), "split_ref": params["split_ref"],
                                           "model": llm.model, "max_reasks": llm.max_reasks,
                                           "config": {k: getattr(params["config"], k) for k in GENERATION_FIELDS}})


@stage_task(answers_artifact, name="llm4idrec-answers", task_run_name="generate-batch-{batch}")
def generate_batch(store_root: str, batch: int, ids: list[int], split_ref: str, config: LLM4IDRecConfig,
                   llm: LLMConfig, ledger_root: str, n_batches: int | None = None) -> str:
    """One batch of users asked the LLM4IDRec prompt by the fine-tuned model `llm.model` (chat completions, no
    response_format, the response cache, every call in the ledger). Tables `rows` (user_id, text) and `failures`;
    fails the task run when a user failed, after writing (tasks/augment.py `write_batch`)."""
    store = ArtifactStore(store_root)
    params = {"ids": list(ids), "split_ref": split_ref, "llm": llm, "config": config}
    ref = answers_artifact(params)
    split, _ = read_split(store, split_ref)
    histories = training_histories(split.train)
    prompts = {u: prompt_text(u, cut_history(u, histories[u], config.max_prompt_tokens)) for u in ids}
    with batch_client(store_root, llm, ledger_root, GENERATE_STAGE, batch) as client:
        outcomes = generate_hosted(client, prompts, max_reasks=llm.max_reasks, max_workers=llm.max_in_flight,
                                   tags={"stage": GENERATE_STAGE, "batch": str(batch)})
    rows = answers_frame(outcomes)
    write_batch(store, ref, params, GENERATE_STAGE, batch, rows, outcomes, n_batches)
    return str(ref)


def answers_frame(outcomes: list[ItemOutcome]) -> pd.DataFrame:
    ok = [o for o in outcomes if o.ok and o.value is not None]
    return pd.DataFrame({"user_id": pd.Series([o.key for o in ok], dtype="int64"),
                         "text": pd.Series([o.value["text"] for o in ok], dtype="string")})


def collected_artifact(params: Mapping[str, Any]) -> ArtifactRef:
    config = {k: getattr(params["config"], k) for k in GENERATION_FIELDS}
    return stage_ref("llm4idrec-generate", {"split_ref": params["split_ref"],
                                            "answer_refs": list(params["answer_refs"]), "config": config})


@stage_task(collected_artifact, name="llm4idrec-generate")
def collect_generation(store_root: str, split_ref: str, answer_refs: list[str], config: LLM4IDRecConfig) -> str:
    """The hosted generation batches' answers parsed into the same artifact as `generate_items` writes."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "answer_refs": list(answer_refs),
              "config": {k: getattr(config, k) for k in GENERATION_FIELDS}}
    ref = collected_artifact({**params, "config": config})
    answers = pd.concat([store.read_table(r, "rows") for r in answer_refs], ignore_index=True)
    answers = answers.sort_values("user_id", kind="stable")
    split, ids = read_split(store, split_ref)
    write_generation(store, ref, params, split, ids, training_histories(split.train),
                     [int(u) for u in answers["user_id"]], [str(t) for t in answers["text"]], config.seed)
    return str(ref)
