"""Filtering generated pairs by the base model's score and merging them into the training data as sets
(official code: newlei/LLM4IDRec `generate_data_process.py`, a per-user set union)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def base_rank_filter(pairs: pd.DataFrame, ranks: np.ndarray, max_rank: int) -> pd.DataFrame:
    """The generated `pairs` (dense columns uid, iid plus any others) whose item the base model ranks within the
    user's top `max_rank` among items not in training (`ranks`: [n_users, n_items] int, 0 = best; training items
    ranked last). An optional second filter beside parsing: it keeps what the base model also finds plausible."""
    if max_rank <= 0:
        raise ValueError(f"max_rank must be > 0, got {max_rank}")
    if not len(pairs):
        return pairs
    keep = ranks[pairs["uid"].to_numpy(), pairs["iid"].to_numpy()] < max_rank
    return pairs[keep].reset_index(drop=True)


def score_ranks(scores: np.ndarray, train_mask: np.ndarray) -> np.ndarray:
    """Per-user rank of every item by descending `scores` ([n_users, n_items]), training items (`train_mask`
    True) pushed last; ties broken by item index. Returns int64 [n_users, n_items], 0 = best."""
    masked = np.where(train_mask, -np.inf, scores)
    order = np.argsort(-masked, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(scores.shape[0], 0), axis=1)
    return ranks


def merge_setwise(train: pd.DataFrame, generated: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(train ∪ generated as (user_id, item_id) sets, number of new pairs). Training rows keep their order first;
    new pairs follow sorted, so the same inputs always give the same table (and content key)."""
    cols = ["user_id", "item_id"]
    old = train[cols].astype("int64").drop_duplicates()
    new = generated[cols].astype("int64").drop_duplicates()
    new = new.merge(old, on=cols, how="left", indicator=True)
    new = new[new["_merge"] == "left_only"][cols].sort_values(cols)
    return pd.concat([old, new], ignore_index=True), int(len(new))
