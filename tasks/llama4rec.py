"""Prefect tasks of Llama4Rec's direct recommendation (Luo et al., arXiv 2401.13870 [L4R]): the item pairs, the
LLM batches (pairwise preferences, rankings), the backbone retrained on D', the backbones' lists and similar users,
the evaluation and the instruction data. Every task writes one artifact and is cached on its content key
(tasks/common.py); an LLM batch is keyed like an augment batch (tasks/augment.py): its ids, the template version,
the model, the sampling parameters, the history length and the keys of what it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from recsys.augment.pairwise import PAIRWISE_VERSION, augment_pairwise, pairwise_frame
from recsys.augment.ranking import RANKING_VERSION, rank_users, rankings_frame
from recsys.augment.runner import ItemOutcome
from recsys.candidates import top_candidates
from recsys.config import EvalConfig, Llama4RecConfig, LLMConfig, ModelConfig, TrainConfig
from recsys.data.dataset import DenseSplit
from recsys.eval.ranking import known_items
from recsys.llama4rec.contexts import chronological, pair_contexts, ranking_contexts
from recsys.llama4rec.evaluation import (
    RerankLists,
    alpha_options,
    choose,
    group_means,
    llm_positions,
    score,
    tail_users,
)
from recsys.llama4rec.instructions import instruction_table
from recsys.llama4rec.pairs import sample_pairs
from recsys.llama4rec.similar import most_similar_users
from recsys.llama4rec.variants import VARIANTS
from recsys.llm.batch import DeferredChat
from recsys.llm.client import LOCAL_PLACEHOLDER_KEY, LLMClient
from recsys.models.factory import build_model
from storage.keys import content_key
from storage.store import ArtifactRef, ArtifactStore
from tasks.augment import batch_client, llm_cache_dir, write_batch
from tasks.candidates import candidates_frame
from tasks.common import read_dense_split, read_split, stage_ref, stage_task, table_digests
from tasks.estimate import price_prompts
from tasks.llmrec import read_edges
from tasks.train import fit_and_store, load_trained

TEMPLATES = {"pairwise": PAIRWISE_VERSION, "ranking": RANKING_VERSION}
BATCH_VERSION = "1"
PARTS = ("valid", "test")
ROWS = "rows"  # the table of an LLM batch


def _train_in_time_order(store: ArtifactStore, dataset_ref: str, split_ref: str) -> pd.DataFrame:
    split, _ = read_split(store, split_ref)
    return chronological(split.train, store.read_table(dataset_ref, "interactions"))


@stage_task("llama4rec-pairs", name="llama4rec-pairs")
def sample_item_pairs(store_root: str, split_ref: str, pairs_per_user: int, seed: int) -> str:
    """`pairs_per_user` pairs per user of items the user has not trained on ([L4R] §4.2); table `pairs`."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "pairs_per_user": pairs_per_user, "seed": seed}
    ref = stage_ref("llama4rec-pairs", params)
    split, ids = read_split(store, split_ref)
    with store.write(ref.stage, ref.key, params) as w:
        w.table("pairs", sample_pairs(split.train, ids.item_ids, pairs_per_user, seed))
    return str(ref)


def llm_batch_ref(params: Mapping[str, Any]) -> ArtifactRef:
    """The output address of one LLM batch: only what changes the answers is part of the key."""
    llm: LLMConfig = params["llm"]
    keyed = {
        "ids": list(params["ids"]),
        "template": TEMPLATES[params["stage"]],
        "model": llm.model,
        "sampling": [llm.temperature, llm.top_p, llm.max_tokens, llm.max_reasks],
        "history": params["max_history"],
        "inputs": [params["dataset_ref"], params["split_ref"], params["source_ref"]],
        "prompt": params.get("prompt"),
        "split": params.get("split"),
    }
    stage = f"llama4rec-{params['stage']}"
    return ArtifactRef(stage, content_key(stage, BATCH_VERSION, keyed))


def ask_stage(client: Any, store: ArtifactStore, stage: str, ids: list[int], dataset_ref: str, split_ref: str,
              source_ref: str, llm: LLMConfig, max_history: int | None, prompt: str | None, split: str | None,
              tags: dict[str, str]) -> tuple[pd.DataFrame, list[ItemOutcome]]:
    """Ask `client` (an LLMClient, or a DeferredChat that only records) the pairwise prompt of `ids` ("pairwise",
    `source_ref` the pairs) or the ranking prompt ("ranking", `source_ref` a backbone's lists, `prompt` "plain" or
    "augmented", `split` the list to rank); returns the validated rows and every item's outcome."""
    train = _train_in_time_order(store, dataset_ref, split_ref)
    items = store.read_table(dataset_ref, "items")
    common = {"max_reasks": llm.max_reasks, "max_workers": llm.max_in_flight, "tags": tags}
    if stage == "pairwise":
        pairs = store.read_table(source_ref, "pairs")
        outcomes = augment_pairwise(client, pair_contexts(train, items, pairs, ids, max_history), **common)
        return pairwise_frame(outcomes, llm.model), outcomes
    if stage == "ranking":
        lists = store.read_table(source_ref, "lists")
        similar = store.read_table(source_ref, "similar")
        contexts = ranking_contexts(train, items, lists[lists["split"] == split],
                                    dict(zip(similar["user_id"], similar["similar_user_id"], strict=True)), ids,
                                    max_history, augmented=prompt == "augmented")
        outcomes = rank_users(client, contexts, **common)
        return rankings_frame(outcomes, llm.model), outcomes
    raise ValueError(f"unknown LLM stage {stage!r}")


@task(name="llama4rec-estimate", cache_policy=NO_CACHE)
def estimate_llm_stage(store_root: str, stage: str, ids_by_split: dict[str | None, list[int]], dataset_ref: str,
                       split_ref: str, source_ref: str, llm: LLMConfig, max_history: int | None, ledger_root: str,
                       prompt: str | None = None, copies: int = 1, label: str | None = None) -> dict[str, Any]:
    """The cost estimate of one LLM stage (tasks/estimate.py `price_prompts`): every prompt built as `llm_batch`
    builds it, for the users of each split in `ids_by_split` (None: pairwise), with no HTTP call and no API key;
    `copies` sets of prompts of the same size in all (the built one first)."""
    store = ArtifactStore(store_root)
    with LLMClient(llm, cache_dir=llm_cache_dir(store_root, llm), api_key=LOCAL_PLACEHOLDER_KEY) as client:
        asker = DeferredChat(client, {}, {}, http=False, rounds=0)
        for split, ids in ids_by_split.items():
            ask_stage(asker, store, stage, ids, dataset_ref, split_ref, source_ref, llm, max_history, prompt, split,
                      {"stage": stage, "batch": "estimate"})
    return price_prompts(stage, sum(len(ids) for ids in ids_by_split.values()), asker, llm, ledger_root,
                         copies=copies, label=label)


@stage_task(llm_batch_ref, name="llama4rec-batch", task_run_name="{stage}-batch-{batch}")
def llm_batch(store_root: str, stage: str, batch: int, ids: list[int], dataset_ref: str, split_ref: str,
              source_ref: str, llm: LLMConfig, max_history: int | None, ledger_root: str, prompt: str | None = None,
              split: str | None = None) -> str:
    """One batch of users asked the pairwise prompt (`stage` "pairwise", `source_ref` the pairs) or the ranking
    prompt (`stage` "ranking", `source_ref` a backbone's lists, `prompt` "plain" or "augmented", `split` the list
    to rank: "valid" or "test"); writes the answers (`pairwise_frame` / `rankings_frame`) and the failures, and
    fails the run when an item failed (a re-run asks again only what is not in the response cache)."""
    store = ArtifactStore(store_root)
    params = {"stage": stage, "ids": ids, "dataset_ref": dataset_ref, "split_ref": split_ref,
              "source_ref": source_ref, "llm": llm, "max_history": max_history, "prompt": prompt, "split": split}
    ref = llm_batch_ref(params)
    tags = {"stage": stage, "batch": str(batch), **({"prompt": prompt, "split": split} if stage == "ranking" else {})}
    with batch_client(store_root, llm, ledger_root, stage, batch) as client:
        rows, outcomes = ask_stage(client, store, stage, ids, dataset_ref, split_ref, source_ref, llm, max_history,
                                   prompt, split, tags)
    write_batch(store, ref, params, stage, batch, rows, outcomes)
    return str(ref)


def augmented_train_ref(params: Mapping[str, Any]) -> ArtifactRef:
    """The output address of `train_augmented`: its parameters and the sha256 of each written triplet batch's rows
    (a batch completed by a re-run keeps its ref but changes its rows)."""
    digests = table_digests(ArtifactStore(params["store_root"]), params["edge_refs"], ROWS)
    return stage_ref("llama4rec-train", {**params, "_extra": digests})


@stage_task(augmented_train_ref, name="llama4rec-train", task_run_name="train-DA-{train.seed}")
def train_augmented(store_root: str, split_ref: str, edge_refs: list[str], model: ModelConfig, train: TrainConfig,
                    eval: EvalConfig) -> str:
    """The backbone retrained on D' = D + the LLM's triplets ([L4R] §4.2, Eq. 3), early-stopped on VALID; a
    checkpoint like `train_model`'s."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "edge_refs": edge_refs, "model": model, "train": train, "eval": eval}
    ref = augmented_train_ref({**params, "store_root": store_root})
    data, ids = read_dense_split(store, split_ref)
    augmented = read_edges(store, edge_refs, ids)
    net = build_model(model, data, seed=train.seed)
    fit_and_store(store, ref, params, net, data, train.tuned_for(model.name), eval,
                  {"model": model.name, "augmented_triplets": 0 if augmented is None else len(augmented)},
                  augmented=augmented)
    return str(ref)


def _lists(net: torch.nn.Module, data: DenseSplit, k: int, known: tuple, user_ids: Any, item_ids: Any) -> pd.DataFrame:
    users, items, scores = top_candidates(net, data, k, known=known)
    return candidates_frame(users, items, scores, user_ids, item_ids)[["user_id", "rank", "item_id"]]


@stage_task("llama4rec-lists", name="llama4rec-lists")
def backbone_lists(store_root: str, split_ref: str, train_ref: str, model: ModelConfig, k: int,
                   device: str = "auto") -> str:
    """A trained backbone's top-k' list of every user for VALID (training items masked) and TEST (training and
    valid items masked), table `lists` (split, user_id, rank, item_id); and each user's most similar user by the
    cosine of its user embeddings ([L4R] §4.3), table `similar` (user_id, similar_user_id, cosine)."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "train_ref": train_ref, "model": model, "k": k, "device": device}
    ref = stage_ref("llama4rec-lists", params)
    data, ids = read_dense_split(store, split_ref)
    net = load_trained(store, train_ref, model, data, device)
    lists = pd.concat([_lists(net, data, k, known_items(data, part), ids.user_ids, ids.item_ids).assign(split=part)
                       for part in PARTS], ignore_index=True)
    with torch.inference_mode():
        user_emb, _ = net.embeddings()
    similar, cosine = most_similar_users(user_emb)
    with store.write(ref.stage, ref.key, params) as w:
        w.table("lists", lists[["split", "user_id", "rank", "item_id"]])
        w.table("similar", pd.DataFrame({"user_id": ids.user_ids, "similar_user_id": ids.user_ids[similar],
                                         "cosine": cosine}))
    return str(ref)


def evaluate_ref(params: Mapping[str, Any]) -> ArtifactRef:
    """The output address of `evaluate_rerank`: its parameters and the sha256 of each written ranking batch."""
    store = ArtifactStore(params["store_root"])
    digests = {name: table_digests(store, refs, ROWS) for name, refs in sorted(params["ranking_refs"].items())}
    return stage_ref("llama4rec-evaluate", {**params, "_extra": digests})


def _rankings(store: ArtifactStore, refs: list[str]) -> pd.DataFrame:
    frames = [store.read_table(r, ROWS) for r in refs if store.exists(r)]
    return (pd.concat(frames, ignore_index=True) if frames else
            pd.DataFrame({c: pd.Series(dtype="int64") for c in ("user_id", "rank", "item_id", "completed", "asks")}))


def ranking_key(backbone: str, prompt: str, part: str) -> str:
    """How `evaluate_rerank` names the LLM's rankings of one backbone's lists, with one prompt, on one split."""
    return f"{backbone}/{prompt}/{part}"


@stage_task(evaluate_ref, name="llama4rec-evaluate", task_run_name="evaluate-llama4rec-{seed}")
def evaluate_rerank(store_root: str, split_ref: str, lists_refs: dict[str, str], ranking_refs: dict[str, list[str]],
                    llama4rec: Llama4RecConfig, k: int, seed: int) -> str:
    """Every variant (recsys/llama4rec/variants.py) on VALID and TEST, overall and for head and tail users, with
    its alpha setting chosen on VALID ([L4R] §5.1 protocol: HR@K and NDCG@K of the re-ranked top-k' lists); json
    `metrics`. `lists_refs`: backbone ("base" | "augmented") -> lists ref; `ranking_refs`: `ranking_key` -> the
    LLM batch refs. A user the LLM did not answer keeps the backbone's order (counted as `fallback`)."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "lists_refs": lists_refs, "ranking_refs": ranking_refs,
              "llama4rec": llama4rec, "k": k, "seed": seed}
    ref = evaluate_ref({**params, "store_root": store_root})
    split, _ = read_split(store, split_ref)
    n_train = split.train.groupby("user_id").size().astype("int64")
    tail = tail_users(n_train, llama4rec.tail_quantile)
    targets = {"valid": split.valid, "test": split.test}
    lists = {}
    for backbone, lists_ref in lists_refs.items():
        table = store.read_table(lists_ref, "lists")
        lists.update({(backbone, part): RerankLists.build(table[table["split"] == part], targets[part], k)
                      for part in PARTS})
    positions: dict[tuple[str, str | None, str], Any] = {}
    answers: dict[str, dict[str, int]] = {}
    for (backbone, part), rerank in lists.items():
        positions[(backbone, None, part)] = llm_positions(rerank, _rankings(store, []))[0]
        for prompt in ("plain", "augmented"):
            name = ranking_key(backbone, prompt, part)
            if name not in ranking_refs:
                continue
            rows = _rankings(store, ranking_refs[name])
            positions[(backbone, prompt, part)], answered = llm_positions(rerank, rows)
            per_user = rows.groupby("user_id")[["completed", "asks"]].first()
            answers[name] = {"users": int(rerank.users.size), "answered": int(answered.sum()),
                             "fallback": int((~answered).sum()), "completed": int((per_user["completed"] > 0).sum()),
                             "reasked": int((per_user["asks"] > 1).sum())}
    variants = {}
    for v in VARIANTS:
        if (v.backbone, v.prompt, "valid") not in positions:
            continue
        options = alpha_options(v.weighting, n_train, llama4rec.alpha_grid)
        settings, alpha, value = choose(lists[(v.backbone, "valid")], positions[(v.backbone, v.prompt, "valid")],
                                        options, llama4rec.select_metric, llama4rec.ks)
        variants[v.name] = {"settings": settings, "selected_on": {llama4rec.select_metric: value}, **{
            part: group_means(lists[(v.backbone, part)],
                              score(lists[(v.backbone, part)], positions[(v.backbone, v.prompt, part)], alpha,
                                    llama4rec.ks), tail) for part in PARTS}}
    with store.write(ref.stage, ref.key, params) as w:
        w.json("metrics", {"variants": variants, "answers": answers,
                           "tail": {"users": int(len(tail)), "max_train_items": int(n_train[tail].max())}})
    return str(ref)


@stage_task("llama4rec-instructions", name="llama4rec-instructions")
def export_instructions(store_root: str, dataset_ref: str, split_ref: str, train_ref: str, lists_ref: str,
                        model: ModelConfig, k: int, max_history: int | None, seed: int, device: str = "auto") -> str:
    """The listwise-ranking instructions from training and validation data (recsys/llama4rec/instructions.py),
    with the backbone of `train_ref` and the similar users of `lists_ref`; table `instructions`."""
    store = ArtifactStore(store_root)
    params = {"dataset_ref": dataset_ref, "split_ref": split_ref, "train_ref": train_ref, "lists_ref": lists_ref,
              "model": model, "k": k, "max_history": max_history, "seed": seed, "device": device}
    ref = stage_ref("llama4rec-instructions", params)
    split, ids = read_split(store, split_ref)
    data = DenseSplit.from_split(split, ids)
    held = pd.concat([split.valid, split.test], ignore_index=True).groupby("user_id").size()
    spare = int(held.max()) if len(held) else 0  # room to drop every held-out item and still show k
    net = load_trained(store, train_ref, model, data, device)
    deep = _lists(net, data, k + spare, (data.train,), ids.user_ids, ids.item_ids)
    similar = store.read_table(lists_ref, "similar")
    table = instruction_table(_train_in_time_order(store, dataset_ref, split_ref), split.valid, split.test,
                              store.read_table(dataset_ref, "items"), deep,
                              dict(zip(similar["user_id"], similar["similar_user_id"], strict=True)), k,
                              max_history, seed)
    with store.write(ref.stage, ref.key, params) as w:
        w.table("instructions", table.astype({"similar_user_id": "int64"}))
    return str(ref)
