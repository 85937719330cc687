"""Pairwise ranking loss and embedding regularisation shared by every recommender."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Mean BPR loss  -log sigmoid(s+ - s-).

    pos_scores: [B]; neg_scores: [B] or [B, n_neg] (each negative pairs with its row's positive).
    Written as softplus(s- - s+), which equals -log sigmoid(s+ - s-) but never overflows or takes log(0).
    """
    if neg_scores.dim() == pos_scores.dim() + 1:
        pos_scores = pos_scores.unsqueeze(-1)
    return F.softplus(neg_scores - pos_scores).mean()


def l2_reg(*embeddings: Tensor, batch_size: int) -> Tensor:
    """Half the summed squared L2 norm of the given embedding rows, divided by the batch size.

    This is LightGCN's official regulariser: it touches only the rows used in the batch, so its strength does
    not depend on how many users or items the dataset has.
    """
    total = torch.stack([e.pow(2).sum() for e in embeddings]).sum()
    return 0.5 * total / batch_size
