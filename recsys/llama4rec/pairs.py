"""The item pairs of Llama4Rec's data augmentation ([L4R] §4.2: "randomly pick pairs of items" for a user): drawn
uniformly from the items the user has not interacted with in training."""

from __future__ import annotations

import numpy as np
import pandas as pd

PAIR_COLUMNS = ("user_id", "pair", "item_a", "item_b")


def sample_pairs(train: pd.DataFrame, item_ids: np.ndarray, pairs_per_user: int, seed: int) -> pd.DataFrame:
    """(user_id, pair, item_a, item_b) int64: `pairs_per_user` pairs for every user of `train` (user_id, item_id),
    2 * pairs_per_user distinct items drawn without replacement from `item_ids` minus the user's training items
    (fewer pairs when fewer items are left). A user's pairs depend only on `seed`, the user id and the user's
    training items, not on which other users are sampled."""
    if pairs_per_user < 0:
        raise ValueError(f"pairs_per_user must be >= 0, got {pairs_per_user}")
    catalogue = np.unique(np.asarray(item_ids, dtype=np.int64))
    rows: list[tuple[int, int, int, int]] = []
    for user, group in train.groupby("user_id", sort=True):
        allowed = np.setdiff1d(catalogue, group["item_id"].to_numpy(np.int64), assume_unique=False)
        n = min(pairs_per_user, allowed.size // 2)
        drawn = np.random.default_rng([seed, int(user)]).choice(allowed, size=2 * n, replace=False)
        rows += [(int(user), p, int(drawn[2 * p]), int(drawn[2 * p + 1])) for p in range(n)]
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS)).astype("int64")
