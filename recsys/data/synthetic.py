"""Planted-signal data: interactions drawn from user and item latent factors, with item features that carry the
item factors (or pure noise), so that a test can tell whether a model uses side information at all.

Each user u and item i get factors p_u, q_i ~ N(0, I_d). User u interacts with `per_user` distinct items drawn
without replacement with probability proportional to exp(p_u . q_i / temperature) (Gumbel top-k). The first
`n_train` of a user's draws (in a random order) are train, the next `n_valid` valid, the rest test: a sparse
training graph, as in LLMRec's setting (paper Table 1: about 5 training interactions per user). Item features are
q_i through a fixed random linear map plus Gaussian noise ("planted"), or Gaussian noise alone ("noise").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from recsys.data.dataset import DenseSplit


@dataclass(frozen=True)
class Planted:
    """A planted dataset: the split (dense ids) and item features [n_items, feature_dim] (float32)."""

    split: DenseSplit
    item_features: np.ndarray


def planted(*, n_users: int = 300, n_items: int = 400, factors: int = 8, per_user: int = 20, n_train: int = 5,
            n_valid: int = 5, temperature: float = 0.5, feature_dim: int = 32, feature_noise: float = 0.5,
            features: Literal["planted", "noise"] = "planted", seed: int = 0) -> Planted:
    """Draw a planted dataset (see the module docstring); every user has n_train / n_valid / the rest test."""
    if not (n_train > 0 and n_train + n_valid < per_user <= n_items):
        raise ValueError("need 0 < n_train, n_train + n_valid < per_user <= n_items")
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((n_users, factors))
    q = rng.standard_normal((n_items, factors))
    logits = p @ q.T / (temperature * np.sqrt(factors))
    gumbel = rng.gumbel(size=logits.shape)
    drawn = np.argsort(-(logits + gumbel), axis=1)[:, :per_user]  # Gumbel top-k: sampling without replacement
    drawn = rng.permuted(drawn, axis=1)
    users = np.repeat(np.arange(n_users), per_user).reshape(n_users, per_user)

    def pairs(cols: slice) -> np.ndarray:
        return np.stack([users[:, cols].ravel(), drawn[:, cols].ravel()], axis=1).astype(np.int64)

    split = DenseSplit(n_users, n_items, pairs(slice(0, n_train)), pairs(slice(n_train, n_train + n_valid)),
                       pairs(slice(n_train + n_valid, per_user)))
    if features == "planted":
        mix = rng.standard_normal((factors, feature_dim)) / np.sqrt(factors)
        x = q @ mix + feature_noise * rng.standard_normal((n_items, feature_dim))
    else:
        x = rng.standard_normal((n_items, feature_dim))
    return Planted(split, x.astype(np.float32))
