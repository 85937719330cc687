"""LLM-augmented implicit feedback (LLMRec paper §3.1.1, Eq. 6) and its noise pruning (Eq. 7).

`AugmentedEdges` holds the LLM's (user, liked item, disliked item) triplets with dense ids, validated once when
built; `sample_augmented` draws omega3 * B of them per batch; `prune_log_sigmoid` / `pruned_bpr` implement Eq. 7.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recsys.data.dataset import IdMap

PruneKeep = Literal["lowest", "highest"]
EDGE_COLUMNS = ("user_id", "pos_item_id", "neg_item_id")  # recsys.augment.runner.edges_frame


class AugmentedEdges:
    """Augmented BPR triplets [m, 3] (dense user, pos item, neg item), int64, checked once at construction.

    Raises ValueError naming the first offending row for: a wrong shape, non-integer values, a user outside
    0..n_users-1, an item outside 0..n_items-1, or pos == neg (a triplet that can only add noise). Checking here,
    once, replaces the official code's per-batch `< n_items` filter (main.py) and its KeyError on missing users.
    """

    def __init__(self, triplets: np.ndarray | Tensor, n_users: int, n_items: int) -> None:
        arr = triplets.detach().cpu().numpy() if isinstance(triplets, Tensor) else np.asarray(triplets)
        if arr.size == 0:
            arr = arr.reshape(0, 3)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(f"augmented triplets must have shape [m, 3] (user, pos, neg), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"augmented triplets must be integer ids, got dtype {arr.dtype}")
            bad = ~np.isfinite(arr).all(axis=1) | (arr != np.round(arr)).any(axis=1)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"augmented triplet row {row} {arr[row].tolist()} holds a non-integer id")
        arr = arr.astype(np.int64)
        self.n_users, self.n_items = int(n_users), int(n_items)
        checks = (
            ((arr[:, 0] < 0) | (arr[:, 0] >= self.n_users), f"user id outside 0..{self.n_users - 1}"),
            ((arr[:, 1] < 0) | (arr[:, 1] >= self.n_items), f"pos item id outside 0..{self.n_items - 1}"),
            ((arr[:, 2] < 0) | (arr[:, 2] >= self.n_items), f"neg item id outside 0..{self.n_items - 1}"),
            (arr[:, 1] == arr[:, 2], "pos item equals neg item"),
        )
        for bad, why in checks:
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"augmented triplet row {row} (user, pos, neg) = {arr[row].tolist()}: {why}")
        self.triplets = torch.from_numpy(np.ascontiguousarray(arr))

    def __len__(self) -> int:
        return int(self.triplets.shape[0])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, ids: IdMap) -> AugmentedEdges:
        """From the augmentation stage's `augmented_edges` table (raw user_id, pos_item_id, neg_item_id).

        A raw id missing from `ids` raises ValueError naming its row and column.
        """
        missing = [c for c in EDGE_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"augmented edges table lacks columns {missing}")
        users = ids.users_to_dense(frame["user_id"].to_numpy())  # DataError (a ValueError) names the row
        pos = _items(ids, frame["pos_item_id"].to_numpy(), "pos_item_id")
        neg = _items(ids, frame["neg_item_id"].to_numpy(), "neg_item_id")
        return cls(np.stack([users, pos, neg], axis=1), ids.n_users, ids.n_items)


def _items(ids: IdMap, raw: np.ndarray, column: str) -> np.ndarray:
    try:
        return ids.items_to_dense(raw)
    except ValueError as err:  # name the column (pos or neg), not just "item"
        raise ValueError(f"augmented edges column {column!r}: {err}") from err


def sample_augmented(triplets: Tensor, batch_users: Tensor, n_users: int, m: int) -> Tensor:
    """Up to m augmented triplets [k, 3] of users in this batch, without replacement, from torch's global RNG.

    As in the official main.py, augmented edges join the batch of their own users (there: int(0.1 * 1024) = 102
    of the batch's users). Fewer than m come back when the batch's users hold fewer triplets.
    """
    if m <= 0 or triplets.shape[0] == 0:
        return triplets[:0]
    in_batch = torch.zeros(n_users, dtype=torch.bool, device=triplets.device)
    in_batch[batch_users] = True
    candidates = torch.nonzero(in_batch[triplets[:, 0]]).squeeze(1)
    if candidates.numel() > m:
        candidates = candidates[torch.randperm(candidates.numel(), device=candidates.device)[:m]]
    return triplets.index_select(0, candidates)


def n_kept(n: int, omega4: float) -> int:
    """N = (1 - omega4) * n, truncated as int() in the official main.py, but at least 1 when n > 0."""
    return min(n, max(1, int((1.0 - omega4) * n))) if n > 0 else 0


def prune_log_sigmoid(log_sig: Tensor, omega4: float, keep: PruneKeep = "lowest") -> tuple[Tensor, Tensor]:
    """Eq. 7: of the per-triplet log sigmoid(s+ - s-) terms [n], keep N = (1 - omega4) n; (values, indices).

    keep="lowest" is SortAscend(...)[0:N], as in the paper and the official code: the most negative terms, i.e.
    the highest-loss triplets, survive. keep="highest" keeps the N largest (lowest-loss) terms instead.
    """
    n = n_kept(log_sig.numel(), omega4)
    values, idx = torch.topk(log_sig.reshape(-1), n, largest=(keep == "highest"), sorted=True)
    return values, idx


def pruned_bpr(log_sig: Tensor, omega4: float, keep: PruneKeep = "lowest", *, prune: bool = True) -> Tensor:
    """BPR loss -mean(kept log sigmoid terms); with prune=False, or omega4 = 0, every term is kept."""
    if not prune or omega4 == 0.0:
        return -log_sig.mean()
    values, _ = prune_log_sigmoid(log_sig, omega4, keep)
    return -values.mean()
