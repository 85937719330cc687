"""The training loop on a planted-answer dataset, early stopping on valid only, sampling, seeding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recsys.config import EvalConfig, ModelConfig, TrainConfig
from recsys.data.dataset import DenseSplit
from recsys.eval.ranking import evaluate
from recsys.models.factory import build_model
from recsys.train.sampling import NegativeSampler, epoch_triplets
from recsys.train.trainer import EpochReport, fit

N_USERS, N_ITEMS, GROUP = 40, 20, 10
EVAL = EvalConfig(ks=(1, 2, 5))


def checkerboard(seed: int = 0) -> DenseSplit:
    """Users 0..19 like items 0..9, users 20..39 like items 10..19; per user 8 train, 1 valid, 1 test item.

    After masking train, a user's two unseen liked items are exactly its valid and test item, so a model that
    learnt the groups must put both at ranks 1-2: valid recall@2 = 1.
    """
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    for u in range(N_USERS):
        liked = rng.permutation(GROUP) + (0 if u < N_USERS // 2 else GROUP)
        train += [(u, i) for i in liked[:8]]
        valid.append((u, liked[8]))
        test.append((u, liked[9]))
    return DenseSplit(N_USERS, N_ITEMS, np.array(train), np.array(valid), np.array(test))


def quick_cfg(**kw: object) -> TrainConfig:
    base = {"max_epochs": 60, "batch_size": 64, "lr": 0.05, "reg_weight": 1e-2, "patience": 10, "device": "cpu"}
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["mf", "lightgcn"])
def test_both_models_learn_the_planted_groups(name: str) -> None:
    data = checkerboard()
    model = build_model(ModelConfig(name=name, embedding_dim=8, n_layers=2), data, seed=0)
    result = fit(model, data, quick_cfg(), EVAL)
    assert result.best_valid["recall@2"] == 1.0
    assert evaluate(model, data, "valid", (2,))["recall@2"] == 1.0  # best state restored into the model
    assert evaluate(model, data, "test", (1,))["hit@1"] == 1.0  # test masks valid too: test item ranks first
    # stopped after `patience` epochs without improvement, and the best epoch's weights were put back
    assert result.stopped_early and result.best_epoch == result.epochs_run - 10
    for k, v in model.state_dict().items():
        assert torch.equal(v, result.best_state[k])
    assert evaluate(model, data, "valid", EVAL.ks + (10,)) == pytest.approx(result.best_valid)
    assert result.history[0]["loss"] > result.history[-1]["loss"]


def test_fit_never_reads_test() -> None:
    data = checkerboard()
    poisoned = dataclasses.replace(data, test=np.array([[10**9, -5], [-1, 10**12]]))
    results = []
    for split in (data, poisoned):
        model = build_model(ModelConfig(name="lightgcn", embedding_dim=8), split, seed=3)
        results.append(fit(model, split, quick_cfg(max_epochs=5), EVAL))
    # out-of-range test ids would raise if touched; identical histories show test has no influence at all
    strip = [[{k: v for k, v in h.items() if "seconds" not in k} for h in r.history] for r in results]
    assert strip[0] == strip[1]


def test_early_stopping_and_best_epoch_follow_valid() -> None:
    data = checkerboard()
    model = build_model(ModelConfig(name="mf", embedding_dim=8), data, seed=0)
    reports: list[EpochReport] = []
    # lr ~ 0: the valid metric never strictly improves after the first evaluation
    result = fit(model, data, quick_cfg(lr=1e-12, patience=3, max_epochs=50), EVAL, on_epoch=reports.append)
    assert result.stopped_early and result.best_epoch == 1 and result.epochs_run == 4
    assert [r.epoch for r in reports] == [1, 2, 3, 4] and reports[0].is_best and not reports[-1].is_best
    assert reports[-1].epochs_without_improvement == 3
    assert "ndcg@10" in reports[0].describe() and "best" in reports[-1].describe()


def test_an_exception_raised_by_on_epoch_propagates() -> None:
    def prune(report: EpochReport) -> None:  # as a pruner or an interrupted progress bar would
        if report.epoch == 2 and report.valid is not None:
            raise RuntimeError(f"pruned at epoch {report.epoch}")

    model = build_model(ModelConfig(name="mf", embedding_dim=8), checkerboard(), seed=0)
    with pytest.raises(RuntimeError, match="pruned at epoch 2"):
        fit(model, checkerboard(), quick_cfg(max_epochs=10), EVAL, on_epoch=prune)


def test_eval_every_and_final_epoch() -> None:
    data = checkerboard()
    model = build_model(ModelConfig(name="mf", embedding_dim=8), data, seed=0)
    result = fit(model, data, quick_cfg(max_epochs=5, eval_every=2), EVAL)
    evaluated = [h["epoch"] for h in result.history if h["eval_seconds"] is not None]
    assert evaluated == [2, 4, 5]  # the last epoch is always evaluated
    assert result.best_epoch in evaluated
    assert "valid_ndcg@10" in result.history[1]  # the monitor's K is evaluated even if not in ks


def test_same_seed_same_result() -> None:
    data = checkerboard()
    runs = []
    for _ in range(2):
        model = build_model(ModelConfig(name="lightgcn", embedding_dim=8), data, seed=7)
        runs.append(fit(model, data, quick_cfg(max_epochs=4, seed=7), EVAL))
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]
    for k, v in runs[0].best_state.items():
        assert torch.equal(v, runs[1].best_state[k])
    other = fit(build_model(ModelConfig(name="lightgcn", embedding_dim=8), data, seed=7), data,
                quick_cfg(max_epochs=4, seed=8), EVAL)
    assert other.history[0]["loss"] != runs[0].history[0]["loss"]  # the seed drives the sampling


@pytest.mark.parametrize("dense_lookup_max", [0, 10**6])  # binary-search and dense-table lookups
def test_negatives_never_hit_train_items(dense_lookup_max: int) -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 12
    # dense users: each has 10 of 12 items, so almost every draw collides and must be redrawn
    train = np.array([(u, i) for u in range(n_users) for i in rng.choice(n_items, 10, replace=False)])
    sampler = NegativeSampler(train, n_users, n_items, dense_lookup_max=dense_lookup_max)
    users, pos, neg = epoch_triplets(train, sampler, 5, rng)
    assert neg.shape == (len(train), 5)
    assert not sampler.is_train(np.repeat(users, 5), neg.ravel()).any()
    assert sampler.is_train(users, pos).all()
    # the epoch is a permutation of the train pairs
    assert sorted(map(tuple, np.stack([users, pos], 1).tolist())) == sorted(map(tuple, train.tolist()))
    # each user's two free items are both drawn (uniform over the free items, not a fixed one)
    for u in range(3):
        free = set(range(n_items)) - set(train[train[:, 0] == u, 1].tolist())
        assert set(neg[users == u].ravel().tolist()) == free


def test_user_with_every_item_cannot_get_negatives() -> None:
    train = np.array([(0, 0), (0, 1), (1, 0)])
    sampler = NegativeSampler(train, 2, 2)
    with pytest.raises(ValueError, match="every item"):
        sampler.sample(np.array([0]), 1, np.random.default_rng(0))
    assert sampler.sample(np.array([1, 1]), 2, np.random.default_rng(0)).tolist() == [[1, 1], [1, 1]]
