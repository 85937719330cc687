"""Llama4Rec's listwise-ranking instruction data ([L4R] §4.3: instructions with prompt augmentation; the paper
tunes LLaMA-2 on them), from TRAINING and VALIDATION data only, as chat messages for a fine-tuning job.

Two instructions per user at most:
- "train": the target is the user's most recent training item (users with at least 3 training items, as [L4R]
  drops users with fewer than 3 interactions); the history is the training items before it; the candidates are
  the backbone's list without the user's valid and test items, with the target put at a random place (a seeded
  draw per user) when the backbone did not rank it (it never does: it trained on it).
- "valid": the target is the user's valid item; the history is the training items; the candidates are the
  backbone's list without the user's test items, the target put in likewise when missing.
The prompt is the augmented ranking prompt (recsys/augment/ranking.py) and the answer ranks the target first, then
the other candidates in the backbone's order. A user's test items reach no instruction: not as history, not as a
candidate, not as a target.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from recsys.augment.ranking import RankingContext, ranking_messages
from recsys.llama4rec.contexts import ranking_contexts

SOURCES = ("train", "valid")
MIN_TRAIN_ITEMS = 3  # [L4R] §4.3: instructions of users with fewer than 3 interactions are removed


def _held_out(frames: list[pd.DataFrame]) -> dict[int, set[int]]:
    both = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["user_id", "item_id"])
    return {int(u): set(g["item_id"].astype("int64")) for u, g in both.groupby("user_id")}


def _candidates(deep: list[int], held: set[int], target: int, k: int, rng: np.random.Generator) -> list[int]:
    """The first k of the backbone's `deep` list without the `held` items; when `target` is not among them, it
    takes a random place and the last one goes."""
    listed = [i for i in deep if i not in held][:k]
    if target in listed:
        return listed
    listed = listed[: k - 1]
    listed.insert(int(rng.integers(0, len(listed) + 1)), target)
    return listed


def _targets(train: pd.DataFrame, valid: pd.DataFrame) -> pd.DataFrame:
    """(user_id, source, target_item_id): the most recent training item of users with >= MIN_TRAIN_ITEMS, and
    every user's first valid item."""
    counts = train.groupby("user_id")["item_id"].transform("size")
    last = train[counts >= MIN_TRAIN_ITEMS].groupby("user_id", sort=True).tail(1)
    first_valid = valid.groupby("user_id", sort=True).head(1)
    frames = [last.assign(source="train"), first_valid.assign(source="valid")]
    out = pd.concat(frames, ignore_index=True).rename(columns={"item_id": "target_item_id"})
    return out[["user_id", "source", "target_item_id"]]


def instruction_table(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame, items: pd.DataFrame,
                      deep_lists: pd.DataFrame, similar: Mapping[int, int], k: int, max_history: int | None,
                      seed: int) -> pd.DataFrame:
    """One row per instruction: user_id, source ("train" | "valid"), target_item_id, candidate_item_ids (the
    list shown, in the backbone's order), similar_user_id, messages (JSON: system, user, assistant).

    train: training pairs in time order (`contexts.chronological`); valid, test: the held-out pairs (used only to
    keep them out); deep_lists: (user_id, rank, item_id), the backbone's top list with training items masked and
    a few more than k items (spares for the ones removed); similar: raw user id -> most similar raw user id.
    """
    held = {"train": _held_out([valid, test]), "valid": _held_out([test])}
    deep = {int(u): g.sort_values("rank")["item_id"].astype("int64").tolist() for u, g in deep_lists.groupby("user_id")}
    rows = []
    every_target = _targets(train, valid)
    for source in SOURCES:
        targets = every_target[(every_target["source"] == source) & every_target["user_id"].isin(list(deep))]
        if source == "train":  # the target leaves the history
            key = pd.MultiIndex.from_frame(targets[["user_id", "target_item_id"]])
            history = train[~pd.MultiIndex.from_frame(train[["user_id", "item_id"]]).isin(key)]
        else:
            history = train
        lists = []
        for user, target in zip(targets["user_id"], targets["target_item_id"], strict=True):
            rng = np.random.default_rng([seed, int(user), SOURCES.index(source)])
            shown = _candidates(deep[int(user)], held[source].get(int(user), set()), int(target), k, rng)
            lists += [(int(user), r, item) for r, item in enumerate(shown, 1)]
        frame = pd.DataFrame(lists, columns=["user_id", "rank", "item_id"]).astype("int64")
        contexts = ranking_contexts(history, items, frame, similar, targets["user_id"], max_history, augmented=True,
                                    similar_train=train)
        for ctx, target in zip(contexts, targets["target_item_id"], strict=True):
            rows.append({"user_id": ctx.user.user_id, "source": source, "target_item_id": int(target),
                         "candidate_item_ids": [c.item_id for c in ctx.user.candidates],
                         "similar_user_id": ctx.similar.user_id if ctx.similar else None,
                         "messages": json.dumps(instruction_messages(ctx, int(target)))})
    return pd.DataFrame(rows, columns=["user_id", "source", "target_item_id", "candidate_item_ids",
                                       "similar_user_id", "messages"])


def instruction_messages(ctx: RankingContext, target: int) -> list[dict[str, str]]:
    """The ranking prompt of `ctx` and its answer: the target first, then the other candidates in the backbone's
    order, as indices of the shown candidates."""
    index = {item.item_id: i for i, item in enumerate(ctx.shown())}
    order = [target, *(c.item_id for c in ctx.user.candidates if c.item_id != target)]
    answer = json.dumps({"ranking": [index[i] for i in order]})
    return [*ranking_messages(ctx), {"role": "assistant", "content": answer}]
