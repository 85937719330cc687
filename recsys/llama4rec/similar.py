"""The most similar user of each user, for Llama4Rec's prompt augmentation ([L4R] §4.3: cosine similarity of the
pre-trained backbone's user embeddings; the single most similar user's history goes into the prompt)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def most_similar_users(user_emb: Tensor, batch_users: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(similar [U] int64, cosine [U] float32): for each user (row of `user_emb` [U, d]), the other user with the
    highest cosine similarity, never the user itself (ties: the lower index). A zero vector has similarity 0 to
    everyone. Needs U >= 2."""
    n = int(user_emb.shape[0])
    if n < 2:
        raise ValueError("a similar user needs at least 2 users")
    with torch.inference_mode():
        unit = torch.nn.functional.normalize(user_emb.detach().float(), dim=1)
        similar = np.empty(n, dtype=np.int64)
        cosine = np.empty(n, dtype=np.float32)
        for start in range(0, n, batch_users):
            rows = torch.arange(start, min(start + batch_users, n), device=unit.device)
            sims = unit[rows] @ unit.T
            sims[torch.arange(rows.numel(), device=unit.device), rows] = float("-inf")  # never the user itself
            best, idx = sims.max(dim=1)  # the first maximum: the lower index on a tie
            similar[start : start + rows.numel()] = idx.cpu().numpy()
            cosine[start : start + rows.numel()] = best.cpu().numpy()
    return similar, cosine
