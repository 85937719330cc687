"""Top-n candidate items per user from a trained base model, for the LLM stages.

Only TRAIN items are excluded: valid/test items are ranked like any other unseen item, so the candidate list
says nothing about which items were held out.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.data.dataset import DenseSplit
from recsys.eval.ranking import InteractionIndex, mask_items
from recsys.models.base import Recommender

PAD_ITEM = -1  # item id used where a user has fewer than n unseen items; its score is NaN


def top_candidates(
    model: Recommender, data: DenseSplit, n: int, batch_users: int = 1024, known: tuple[np.ndarray, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users [U], items [U, n], scores [U, n]) for every user 0..n_users-1, best first, dense ids.

    items are the n highest-scoring items not in the user's train set (or not in any of the `known` [m, 2] pair
    arrays, e.g. `recsys.eval.ranking.known_items(data, "test")`: train and valid). A user with fewer than n such
    items gets them first and then PAD_ITEM (-1) with score NaN in the remaining columns, so the arrays stay
    rectangular.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    users = np.arange(data.n_users, dtype=np.int64)
    items = np.full((users.size, n), PAD_ITEM, dtype=np.int64)
    scores = np.full((users.size, n), np.nan, dtype=np.float32)
    k = min(n, data.n_items)
    seen = InteractionIndex(data.n_users, *(known if known is not None else (data.train,)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            user_emb, item_emb = model.embeddings()
            device = user_emb.device
            for start in range(0, users.size, batch_users):
                batch = users[start : start + batch_users]
                rows, cols = seen.coords(batch)
                s = mask_items(
                    user_emb[torch.from_numpy(batch).to(device)] @ item_emb.T,
                    (torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)),
                )
                top_s, top_i = torch.topk(s, k, dim=1)
                top_s, top_i = top_s.float().cpu().numpy(), top_i.cpu().numpy()
                ok = np.isfinite(top_s)  # -inf marks a train item that only filled a slot
                items[start : start + batch.size, :k] = np.where(ok, top_i, PAD_ITEM)
                scores[start : start + batch.size, :k] = np.where(ok, top_s, np.nan)
    finally:
        model.train(was_training)
    return users, items, scores
