"""The data of Llama4Rec's prompts, from TRAINING interactions only: the users' histories in time order, the
pairs of the pairwise prompts and the ranking prompts' contexts (with the most similar user's history for prompt
augmentation). Valid and test interactions are never passed in here, except as the lists to re-rank."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from recsys.augment.pairwise import PairContext
from recsys.augment.prompts import build_user_contexts, item_texts
from recsys.augment.ranking import RankingContext

NO_CANDIDATES = pd.DataFrame({"user_id": pd.Series(dtype="int64"), "rank": pd.Series(dtype="int64"),
                              "item_id": pd.Series(dtype="int64")})


def chronological(train: pd.DataFrame, interactions: pd.DataFrame) -> pd.DataFrame:
    """The training pairs (user_id, item_id) ordered per user by timestamp (ties by item id), so that a history
    truncated to its last items keeps the most recent ones; the train rows' own order when `interactions` has no
    timestamps."""
    pairs = train[["user_id", "item_id"]].astype("int64")
    if "timestamp" not in interactions or interactions["timestamp"].isna().all():
        return pairs.reset_index(drop=True)
    stamps = interactions[["user_id", "item_id", "timestamp"]].drop_duplicates(["user_id", "item_id"], keep="first")
    timed = pairs.merge(stamps, on=["user_id", "item_id"], how="left")
    timed["timestamp"] = timed["timestamp"].astype("Int64").fillna(np.iinfo(np.int64).max)
    ordered = timed.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    return ordered[["user_id", "item_id"]].reset_index(drop=True)


def pair_contexts(train: pd.DataFrame, items: pd.DataFrame, pairs: pd.DataFrame, user_ids: Iterable[int],
                  max_history: int | None) -> list[PairContext]:
    """One PairContext per user id: the training history (`train` in time order, see `chronological`) and the
    user's pairs (user_id, pair, item_a, item_b)."""
    users = [int(u) for u in user_ids]
    contexts = build_user_contexts(train, items, NO_CANDIDATES, users, max_history)
    mine = pairs[pairs["user_id"].isin(users)].sort_values(["user_id", "pair"])
    texts = item_texts(items, [*mine["item_a"], *mine["item_b"]])
    of_user = {int(u): [(texts[int(a)], texts[int(b)]) for a, b in zip(g["item_a"], g["item_b"], strict=True)]
               for u, g in mine.groupby("user_id", sort=False)}
    return [PairContext(ctx, tuple(of_user.get(ctx.user_id, []))) for ctx in contexts]


def ranking_contexts(train: pd.DataFrame, items: pd.DataFrame, lists: pd.DataFrame, similar: Mapping[int, int],
                     user_ids: Iterable[int], max_history: int | None, augmented: bool,
                     similar_train: pd.DataFrame | None = None) -> list[RankingContext]:
    """One RankingContext per user id: the training history (`train` in time order), the backbone's list
    (user_id, rank, item_id) as candidates in its order and, when `augmented`, the training history of the user's
    most similar user (`similar`: raw user id -> raw user id) from `similar_train` (default `train`)."""
    users = [int(u) for u in user_ids]
    contexts = build_user_contexts(train, items, lists, users, max_history)
    if not augmented:
        return [RankingContext(ctx) for ctx in contexts]
    others = [int(similar[u]) for u in users]
    their_train = train if similar_train is None else similar_train
    by_id = {c.user_id: c for c in build_user_contexts(their_train, items, NO_CANDIDATES, set(others), max_history)}
    return [RankingContext(ctx, by_id[other], augmented=True) for ctx, other in zip(contexts, others, strict=True)]
