"""Graph normalisation, model shapes and equivalences, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.config import ModelConfig
from recsys.data.dataset import DenseSplit
from recsys.models.factory import build_model
from recsys.models.graph import normalized_adjacency, symmetric_spmm
from recsys.models.lightgcn import LightGCN
from recsys.models.mf import MF
from recsys.train.losses import bpr_loss, l2_reg

# 2 users, 3 items; item 2 has no train edge; (0, 1) appears twice and must count once.
TINY = np.array([[0, 0], [0, 1], [1, 1], [0, 1]])


def tiny_split() -> DenseSplit:
    empty = np.zeros((0, 2), dtype=np.int64)
    return DenseSplit(2, 3, TINY, empty, empty)


def test_adjacency_values_by_hand() -> None:
    a = normalized_adjacency(TINY, 2, 3).to_dense()
    # nodes: u0=0, u1=1, i0=2, i1=3, i2=4; degrees u0=2, u1=1, i0=1, i1=2, i2=0
    expected = torch.zeros(5, 5)
    expected[0, 2] = expected[2, 0] = 1 / math.sqrt(2 * 1)
    expected[0, 3] = expected[3, 0] = 1 / math.sqrt(2 * 2)
    expected[1, 3] = expected[3, 1] = 1 / math.sqrt(1 * 2)
    torch.testing.assert_close(a, expected)


def test_symmetric_spmm_matches_dense_gradient() -> None:
    adj = normalized_adjacency(TINY, 2, 3)
    x = torch.randn(5, 4, requires_grad=True)
    (symmetric_spmm(adj, symmetric_spmm(adj, x)) ** 2).sum().backward()
    g_sparse = x.grad.clone()
    x.grad = None
    dense = adj.to_dense()
    ((dense @ (dense @ x)) ** 2).sum().backward()
    torch.testing.assert_close(g_sparse, x.grad)


def test_shapes_and_checkpoint_contents() -> None:
    data = tiny_split()
    for name in ("mf", "lightgcn"):
        model = build_model(ModelConfig(name=name, embedding_dim=8), data, seed=0)
        u, i = model.embeddings()
        assert u.shape == (2, 8) and i.shape == (3, 8)
        assert model.full_scores(torch.tensor([1, 0, 1])).shape == (3, 3)
        # only trainable tables are saved; the graph is rebuilt from train pairs
        assert set(model.state_dict()) == {"user_emb", "item_emb"}


def test_lightgcn_propagation_is_mean_of_layers() -> None:
    torch.manual_seed(0)
    model = LightGCN(2, 3, 4, n_layers=2, train_pairs=TINY)
    a = normalized_adjacency(TINY, 2, 3).to_dense()
    e0 = torch.cat([model.user_emb, model.item_emb]).detach()
    expected = (e0 + a @ e0 + a @ a @ e0) / 3
    u, i = model.embeddings()
    torch.testing.assert_close(torch.cat([u, i]), expected)
    # an item without train edges keeps only its layer-0 share
    torch.testing.assert_close(i[2], e0[4] / 3)


def test_lightgcn_with_zero_layers_equals_mf() -> None:
    lgn = LightGCN(2, 3, 4, n_layers=0, train_pairs=TINY)
    mf = MF(2, 3, 4)
    mf.load_state_dict(lgn.state_dict())
    users = torch.tensor([0, 1])
    torch.testing.assert_close(lgn.full_scores(users), mf.full_scores(users))
    args = (users, torch.tensor([0, 1]), torch.tensor([2, 0]))
    torch.testing.assert_close(lgn.loss(*args, reg_weight=1e-2)[0], mf.loss(*args, reg_weight=1e-2)[0])


def test_seeded_build_is_reproducible() -> None:
    data = tiny_split()
    cfg = ModelConfig(name="lightgcn", embedding_dim=8)
    a, b, c = (build_model(cfg, data, seed=s).user_emb for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    xavier = build_model(ModelConfig(name="mf", embedding_dim=8, init="xavier"), data, seed=1).user_emb
    assert xavier.abs().max() <= math.sqrt(6 / (2 + 8)) + 1e-6


def test_bpr_loss_values_and_stability() -> None:
    pos = torch.tensor([2.0, 0.0, 1000.0])
    neg = torch.tensor([1.0, 0.0, -1000.0])
    expected = -torch.log(torch.sigmoid(torch.tensor([1.0, 0.0]))).sum() / 3  # third term is ~0
    torch.testing.assert_close(bpr_loss(pos, neg), expected)
    assert torch.isfinite(bpr_loss(torch.tensor([-1000.0]), torch.tensor([1000.0])))  # naive log(sigmoid) -> inf
    # several negatives per positive pair up row-wise
    torch.testing.assert_close(bpr_loss(torch.tensor([0.0]), torch.tensor([[0.0, 0.0]])), torch.tensor(math.log(2)))


def test_l2_reg_value() -> None:
    reg = l2_reg(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0], [0.0, 1.0]]), batch_size=2)
    assert float(reg) == pytest.approx(0.5 * (1 + 4 + 9 + 1) / 2)


def test_loss_parts_and_training_steps_decrease_loss() -> None:
    data = tiny_split()
    users, pos, neg = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), torch.tensor([[2], [2], [0]])
    for name in ("mf", "lightgcn"):
        model = build_model(ModelConfig(name=name, embedding_dim=8), data, seed=0)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        losses = []
        for _ in range(30):
            opt.zero_grad()
            loss, parts = model.loss(users, pos, neg, reg_weight=1e-3)
            assert float(loss.detach()) == pytest.approx(float(parts["bpr"]) + 1e-3 * float(parts["reg"]), rel=1e-5)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < 0.5 * losses[0], name
