"""Full-ranking evaluation: score every item for every user, mask already-known items, take the top K.

For "valid" the user's train items are masked; for "test" the train and valid items. Users without a relevant
item in the evaluated split are skipped, and so, by default, are cold users (a relevant item but no train item:
their embedding was never trained; recsys/data/degenerate.py). Per-split work that does not depend on the model
(which users, which items to mask, which are relevant) is done once in `RankingEvaluator`, so the training loop
can evaluate every epoch for the price of one matmul and one top-k per user batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from recsys.data.dataset import DenseSplit
from recsys.eval.metrics import per_user_metrics, ranking_metrics
from recsys.models.base import Recommender

SplitName = Literal["valid", "test"]


class InteractionIndex:
    """Each user's items (CSR layout: indptr over users, item ids) from one or more [n, 2] pair arrays."""

    def __init__(self, n_users: int, *pairs: np.ndarray) -> None:
        both = np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1, 2) for p in pairs]) if pairs else None
        if both is None or both.size == 0:
            both = np.zeros((0, 2), dtype=np.int64)
        both = np.unique(both, axis=0)  # sorted by user then item; duplicates (and overlaps of splits) once
        self.n_users = int(n_users)
        self.indices = both[:, 1]
        self.indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(both[:, 0], minlength=self.n_users), out=self.indptr[1:])

    def counts(self, users: np.ndarray) -> np.ndarray:
        """Number of items of each user."""
        users = np.asarray(users, dtype=np.int64)
        return self.indptr[users + 1] - self.indptr[users]

    def coords(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) pairs for a batch: row is the position of the user in `users`, vectorised (no Python loop)."""
        users = np.asarray(users, dtype=np.int64)
        counts = self.counts(users)
        rows = np.repeat(np.arange(users.size), counts)
        starts = np.repeat(self.indptr[users], counts)
        offsets = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        return rows, self.indices[starts + offsets]


def mask_items(scores: Tensor, coords: tuple[Tensor, Tensor]) -> Tensor:
    """Set scores[row, item] = -inf in place for the given coordinates (e.g. from `InteractionIndex.coords`)."""
    scores[coords[0], coords[1]] = float("-inf")
    return scores


def known_items(data: DenseSplit, split: SplitName) -> tuple[np.ndarray, ...]:
    """The pair arrays masked when ranking for `split`: train for valid, train and valid for test."""
    if split == "valid":
        return (data.train,)
    if split == "test":
        return (data.train, data.valid)
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


@dataclass(frozen=True)
class _Batch:
    users: Tensor  # [B] dense user ids
    mask: tuple[Tensor, Tensor]  # items to exclude from the ranking
    relevant: tuple[Tensor, Tensor]  # items of the evaluated split


class RankingEvaluator:
    """Reusable full-ranking evaluation of one split; call it with a model to get {"ndcg@10": ..., ...}.

    `users` are the evaluated dense users; `cold_users` the users with a relevant item but no train item, left out
    of `users` unless `cold_users="keep"`.
    """

    def __init__(self, data: DenseSplit, split: SplitName, ks: Sequence[int], batch_users: int = 1024,
                 cold_users: Literal["exclude", "keep"] = "exclude") -> None:
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
        self.split = split
        self.ks = tuple(int(k) for k in ks)
        self.n_items = int(data.n_items)
        self.k_top = min(max(self.ks), self.n_items)  # topk cannot ask for more items than exist
        target = data.valid if split == "valid" else data.test
        seen = InteractionIndex(data.n_users, *known_items(data, split))
        relevant = InteractionIndex(data.n_users, target)
        users = np.flatnonzero(relevant.counts(np.arange(data.n_users)) > 0)
        trained = np.bincount(np.asarray(data.train, dtype=np.int64).reshape(-1, 2)[:, 0], minlength=data.n_users) > 0
        self.cold_users = users[~trained[users]]
        self.users = users if cold_users == "keep" else users[trained[users]]
        self.n_relevant = relevant.counts(self.users)
        self._batches: list[_Batch] = []
        for start in range(0, self.users.size, batch_users):
            users = self.users[start : start + batch_users]
            self._batches.append(
                _Batch(
                    torch.from_numpy(users),
                    tuple(torch.from_numpy(a) for a in seen.coords(users)),  # type: ignore[arg-type]
                    tuple(torch.from_numpy(a) for a in relevant.coords(users)),  # type: ignore[arg-type]
                )
            )
        self._device = torch.device("cpu")

    def _on(self, device: torch.device) -> list[_Batch]:
        if device != self._device:  # move the precomputed index tensors once, not every call
            self._batches = [
                _Batch(b.users.to(device), tuple(t.to(device) for t in b.mask), tuple(t.to(device) for t in b.relevant))  # type: ignore[arg-type]
                for b in self._batches
            ]
            self._device = device
        return self._batches

    def hits(self, model: Recommender) -> np.ndarray:
        """Bool [n_evaluated_users, k_top]: whether the item at each rank is relevant (users in `self.users` order)."""
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                user_emb, item_emb = model.embeddings()  # once per call, not per batch
                out = []
                for b in self._on(user_emb.device):
                    scores = mask_items(user_emb[b.users] @ item_emb.T, b.mask)
                    top_scores, top_items = torch.topk(scores, self.k_top, dim=1)
                    rel = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
                    rel[b.relevant[0], b.relevant[1]] = True
                    # A masked item can only reach the top K when too few items are left; it never counts.
                    out.append(rel.gather(1, top_items) & torch.isfinite(top_scores))
                hits = torch.cat(out) if out else torch.zeros((0, self.k_top), dtype=torch.bool)
        finally:
            model.train(was_training)
        return hits.cpu().numpy()

    def __call__(self, model: Recommender) -> dict[str, float]:
        return ranking_metrics(self.hits(model), self.n_relevant, self.ks)

    def per_user(self, model: Recommender) -> dict[str, np.ndarray]:
        """Per-user metrics aligned with `self.users` (for significance tests across models)."""
        return per_user_metrics(self.hits(model), self.n_relevant, self.ks)


def evaluate(
    model: Recommender, data: DenseSplit, split: SplitName, ks: Sequence[int], batch_users: int = 1024,
    cold_users: Literal["exclude", "keep"] = "exclude",
) -> dict[str, float]:
    """Mean recall/ndcg/precision/hit at each K over users with relevant items in `split` (and train items, unless
    `cold_users="keep"`), ranking ALL items."""
    return RankingEvaluator(data, split, ks, batch_users, cold_users)(model)
