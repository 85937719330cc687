"""LightGCN (He et al., SIGIR 2020): linear propagation on the normalised user-item graph, mean over layers."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from recsys.models.base import InitScheme, Recommender, init_embedding
from recsys.models.graph import normalized_adjacency, symmetric_spmm


class LightGCN(Recommender):
    """E^(k+1) = D^-1/2 A D^-1/2 E^(k); final embedding = mean of E^(0..K). With K = 0 it is exactly MF."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_dim: int,
        n_layers: int,
        train_pairs: np.ndarray,
        *,
        init: InitScheme = "normal",
    ) -> None:
        super().__init__(n_users, n_items)
        self.n_layers = int(n_layers)
        self.user_emb = nn.Parameter(init_embedding(n_users, embedding_dim, init))
        self.item_emb = nn.Parameter(init_embedding(n_items, embedding_dim, init))
        # Non-persistent: it moves with .to(device) but stays out of checkpoints (it is rebuilt from train pairs).
        self.register_buffer("adj", normalized_adjacency(train_pairs, n_users, n_items), persistent=False)

    def ego_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_emb, self.item_emb

    def embeddings(self) -> tuple[Tensor, Tensor]:
        ego = torch.cat([self.user_emb, self.item_emb])
        total = ego
        h = ego
        for _ in range(self.n_layers):
            h = symmetric_spmm(self.adj, h)
            total = total + h
        final = total / (self.n_layers + 1)
        return final[: self.n_users], final[self.n_users :]
