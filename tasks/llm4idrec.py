"""Prefect tasks of LLM4IDRec: fine-tuning samples, local LoRA fine-tuning, generation with parsing, and the
augmented split (set-wise merge, optional base-rank filter). Each writes one content-keyed artifact."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger

from recsys.config import LLM4IDRecConfig, ModelConfig
from recsys.llm4idrec.jsonl import holdout_users
from recsys.llm4idrec.lora import adapter_tensors, attach_lora, generate, load_adapter, load_base, train_lora
from recsys.llm4idrec.merge import base_rank_filter, merge_setwise, score_ranks
from recsys.llm4idrec.parse import DROP_REASONS, parse_generation
from recsys.llm4idrec.prompts import cut_history, item_list, prompt_text
from recsys.llm4idrec.samples import full_list_samples, prefix_samples, training_histories
from storage.keys import files_fingerprint
from storage.store import ArtifactRef, ArtifactStore
from tasks.common import read_dense_split, read_split, stage_ref, stage_task
from tasks.train import load_trained

RECORD_COLUMNS = ("user_id", "part", "prompt", "target")
GENERATION_FIELDS = ("temperature", "top_p", "max_new_tokens", "seed", "max_prompt_tokens")


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
               **pick_shares(generated, split, users, histories, catalogue, config.seed)}
    with store.write(ref.stage, ref.key, params) as w:
        w.table("generated", generated)
        w.table("answers", pd.DataFrame({"user_id": users, "text": texts}))
        w.json("summary", summary)
    get_run_logger().info("llm4idrec generation: %s", summary)
    return str(ref)


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
