"""The interface every recommender implements, so one trainer, evaluator and candidate generator serve them all."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor, nn

from recsys.train.losses import bpr_loss, l2_reg

LossParts = dict[str, float | Tensor]
InitScheme = Literal["normal", "xavier"]
NORMAL_STD = 0.1  # LightGCN official code: nn.init.normal_(std=0.1)


def init_embedding(n: int, dim: int, scheme: InitScheme) -> Tensor:
    """A fresh [n, dim] float32 table drawn from torch's global RNG (seed it for reproducibility)."""
    table = torch.empty(n, dim)
    if scheme == "normal":
        nn.init.normal_(table, std=NORMAL_STD)
    elif scheme == "xavier":
        nn.init.xavier_uniform_(table)
    else:
        raise ValueError(f"unknown init scheme {scheme!r}")
    return table


class Recommender(nn.Module, ABC):
    """A dot-product recommender over dense user ids 0..n_users-1 and item ids 0..n_items-1.

    Subclasses provide `ego_embeddings` (the trainable layer-0 tables) and `embeddings` (the final ones used for
    scoring, e.g. after graph propagation). Scores are dot products of final embeddings.
    """

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.n_users = int(n_users)
        self.n_items = int(n_items)

    @abstractmethod
    def ego_embeddings(self) -> tuple[Tensor, Tensor]:
        """Layer-0 (trainable) user [n_users, d] and item [n_items, d] embeddings."""

    @abstractmethod
    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final user [n_users, d] and item [n_items, d] embeddings that scores are computed from."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor, *, reg_weight: float = 0.0) -> tuple[Tensor, LossParts]:
        """BPR loss of a batch plus reg_weight * L2 of the batch's layer-0 embeddings (LightGCN official style).

        users, pos: [B] dense ids; neg: [B] or [B, n_neg]. Final embeddings are computed once for the whole batch.
        Returns (total loss, {"bpr": ..., "reg": ...}); the parts are detached scalar tensors for logging (kept as
        tensors so that a GPU is not synchronised every batch).
        """
        user_emb, item_emb = self.embeddings()
        # index_select rather than emb[idx]: same values, but a much cheaper backward (index_add) on CPU.
        u = user_emb.index_select(0, users)
        p = item_emb.index_select(0, pos)
        n = item_emb.index_select(0, neg.reshape(-1)).reshape(*neg.shape, -1)
        pos_scores = (u * p).sum(-1)
        neg_scores = (u.unsqueeze(1) * n).sum(-1) if neg.dim() == 2 else (u * n).sum(-1)
        bpr = bpr_loss(pos_scores, neg_scores)
        ego_u, ego_i = self.ego_embeddings()
        if ego_u is not user_emb or ego_i is not item_emb:  # MF: final == ego, reuse the rows gathered above
            u = ego_u.index_select(0, users)
            p = ego_i.index_select(0, pos)
            n = ego_i.index_select(0, neg.reshape(-1))
        reg = l2_reg(u, p, n, batch_size=users.shape[0])
        total = bpr + reg_weight * reg
        return total, {"bpr": bpr.detach(), "reg": reg.detach()}

    def full_scores(self, users: Tensor) -> Tensor:
        """Scores of every item for the given users: [len(users), n_items]."""
        user_emb, item_emb = self.embeddings()
        return user_emb[users] @ item_emb.T
