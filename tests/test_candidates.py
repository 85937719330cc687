"""Candidate generation: train items excluded, held-out items allowed, padding when too few items remain."""

from __future__ import annotations

import numpy as np
import torch

from recsys.candidates import PAD_ITEM, top_candidates
from recsys.config import ModelConfig
from recsys.data.dataset import DenseSplit
from recsys.models.factory import build_model
from tests.test_metrics import FixedScores


def random_split(seed: int = 0) -> DenseSplit:
    rng = np.random.default_rng(seed)
    n_users, n_items = 25, 30
    train, valid, test = [], [], []
    for u in range(n_users):
        items = rng.permutation(n_items)[: rng.integers(3, 20)]
        train += [(u, i) for i in items[2:]]
        valid.append((u, items[0]))
        test.append((u, items[1]))
    return DenseSplit(n_users, n_items, np.array(train), np.array(valid), np.array(test))


def test_no_train_item_and_rank_order() -> None:
    data = random_split()
    model = build_model(ModelConfig(name="lightgcn", embedding_dim=8), data, seed=0)
    users, items, scores = top_candidates(model, data, n=10, batch_users=7)  # several user batches
    assert users.tolist() == list(range(data.n_users))
    assert items.shape == scores.shape == (data.n_users, 10)
    train = set(map(tuple, data.train.tolist()))
    assert not any((u, i) in train for u, row in zip(users, items, strict=True) for i in row)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    assert all(len(set(row)) == 10 for row in items.tolist())
    # scores are the model's own
    full = model.full_scores(torch.from_numpy(users)).detach().numpy()
    np.testing.assert_allclose(scores, np.take_along_axis(full, items, axis=1), rtol=1e-4, atol=1e-6)


def test_valid_and_test_items_are_not_masked() -> None:
    data = random_split()
    # make each user's valid and test item the two best-scored items overall
    s = np.zeros((data.n_users, data.n_items))
    s[data.valid[:, 0], data.valid[:, 1]] = 2.0
    s[data.test[:, 0], data.test[:, 1]] = 1.0
    _, items, _ = top_candidates(FixedScores(s), data, n=2)
    assert items[:, 0].tolist() == data.valid[:, 1].tolist()
    assert items[:, 1].tolist() == data.test[:, 1].tolist()


def test_n_larger_than_unseen_items_pads() -> None:
    # 4 items; user 0 has 3 in train (1 unseen), user 1 has none (4 unseen)
    data = DenseSplit(2, 4, np.array([(0, 0), (0, 1), (0, 3)]), np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64))
    s = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    _, items, scores = top_candidates(FixedScores(s), data, n=6)
    assert items.tolist() == [[2, PAD_ITEM, PAD_ITEM, PAD_ITEM, PAD_ITEM, PAD_ITEM], [3, 2, 1, 0, PAD_ITEM, PAD_ITEM]]
    assert scores[0, 0] == 2.0 and np.isnan(scores[0, 1:]).all()
    assert scores[1, :4].tolist() == [4.0, 3.0, 2.0, 1.0] and np.isnan(scores[1, 4:]).all()
