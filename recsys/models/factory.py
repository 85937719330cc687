"""Build a recommender from its config and the split it will be trained on."""

from __future__ import annotations

import torch

from recsys.config import ModelConfig
from recsys.data.dataset import DenseSplit
from recsys.models.base import Recommender
from recsys.models.lightgcn import LightGCN
from recsys.models.mf import MF


def build_model(cfg: ModelConfig, data: DenseSplit, *, seed: int | None = None) -> Recommender:
    """A freshly initialised model; LightGCN's graph uses data.train only.

    seed: when given, the initial weights depend only on it (a local torch RNG state, the global one is restored);
    otherwise they come from torch's global RNG.
    """
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if cfg.name == "mf":
            return MF(data.n_users, data.n_items, cfg.embedding_dim, init=cfg.init)
        if cfg.name == "lightgcn":
            return LightGCN(data.n_users, data.n_items, cfg.embedding_dim, cfg.n_layers, data.train, init=cfg.init)
    raise ValueError(f"unknown model {cfg.name!r}")
