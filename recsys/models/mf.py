"""Matrix factorisation trained with BPR (Rendle et al., 2009)."""

from __future__ import annotations

from torch import Tensor, nn

from recsys.models.base import InitScheme, Recommender, init_embedding


class MF(Recommender):
    """One d-dimensional embedding per user and per item; score = dot product."""

    def __init__(self, n_users: int, n_items: int, embedding_dim: int, *, init: InitScheme = "normal") -> None:
        super().__init__(n_users, n_items)
        self.user_emb = nn.Parameter(init_embedding(n_users, embedding_dim, init))
        self.item_emb = nn.Parameter(init_embedding(n_items, embedding_dim, init))

    def ego_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_emb, self.item_emb

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_emb, self.item_emb
