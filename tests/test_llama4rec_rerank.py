"""Llama4Rec's adaptive aggregation, the re-ranking protocol, the pairs, the similar users and BPR on D' = D +
augmented triplets, on hand-computed and planted examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.config import EvalConfig, Llama4RecConfig, Llama4RecRunConfig, ModelConfig
from recsys.llama4rec.aggregation import adaptive_alpha, aggregate, long_tail
from recsys.llama4rec.evaluation import (
    RerankLists,
    alpha_options,
    choose,
    group_means,
    llm_positions,
    rerank_metrics,
    score,
    tail_users,
)
from recsys.llama4rec.pairs import sample_pairs
from recsys.llama4rec.similar import most_similar_users
from recsys.models.factory import build_model
from recsys.train.augmented import AugmentedEdges
from recsys.train.trainer import fit
from tests.test_training import checkerboard, quick_cfg


def test_alpha_of_hand_computed_users() -> None:
    # N(u) = 1, 9, 99: l = ln 2, ln 10, ln 100; (l_max - l) / (l_max - l_min) = 1, ln 10 / ln 50, 0.
    n = np.array([1, 9, 99])
    assert long_tail(n) == pytest.approx([math.log(2), math.log(10), math.log(100)])
    middle = math.log(10) / math.log(50)  # 0.5886
    assert adaptive_alpha(n, 0.5, 0.3) == pytest.approx([0.5, 0.5 * middle, 0.5 * 0.3])
    assert adaptive_alpha(n, 0.9, 0.7) == pytest.approx([0.9, 0.9 * 0.7, 0.9 * 0.7])  # the cut-off alpha2 binds
    assert adaptive_alpha(np.array([5, 5]), 0.5, 0.3) == pytest.approx([0.15, 0.15])  # nobody further in the tail
    with pytest.raises(ValueError, match="alpha1 and alpha2"):
        adaptive_alpha(n, 1.5, 0.3)


def test_aggregation_order_on_a_planted_example() -> None:
    # Backbone list [a, b, c] (columns 0, 1, 2); the LLM ranks [c, a, b]: positions a 2, b 3, c 1.
    llm = np.array([[2, 3, 1]])
    assert aggregate(llm, 0.0).tolist() == [[0, 1, 2]]  # the backbone alone
    assert aggregate(llm, 1.0).tolist() == [[2, 0, 1]]  # the LLM alone
    # alpha 0.5: U(a) = -1.5, U(b) = -2.5, U(c) = -2.0
    assert aggregate(llm, 0.5).tolist() == [[0, 2, 1]]
    # alpha 0.9: U(a) = -1.9, U(b) = -2.9, U(c) = -1.2
    assert aggregate(llm, 0.9).tolist() == [[2, 0, 1]]
    # A tie (k = 2, the LLM swaps them, alpha 0.5: both -1.5) keeps the backbone's order.
    assert aggregate(np.array([[2, 1]]), 0.5).tolist() == [[0, 1]]
    # One alpha per user, row by row.
    assert aggregate(np.array([[2, 3, 1], [2, 3, 1]]), np.array([0.0, 1.0])).tolist() == [[0, 1, 2], [2, 0, 1]]


def _lists() -> RerankLists:
    lists = pd.DataFrame({"user_id": [1] * 5 + [2] * 5, "rank": [1, 2, 3, 4, 5] * 2,
                          "item_id": [10, 11, 12, 13, 14, 20, 21, 22, 23, 24]})
    target = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [13, 20, 99]})  # user 3 has no list: a miss
    return RerankLists.build(lists, target, k=5)


def test_rerank_metrics_of_planted_lists() -> None:
    lists = _lists()
    assert lists.users.tolist() == [1, 2, 3] and lists.relevant.sum(axis=1).tolist() == [1, 1, 0]
    rankings = pd.DataFrame({"user_id": [1] * 5, "rank": [1, 2, 3, 4, 5], "item_id": [13, 10, 11, 12, 14]})
    positions, answered = llm_positions(lists, rankings)
    assert answered.tolist() == [True, False, False]
    assert positions[0].tolist() == [2, 3, 4, 1, 5] and positions[1].tolist() == [1, 2, 3, 4, 5]
    backbone = rerank_metrics(lists, aggregate(positions, 0.0), (3, 5))
    assert backbone["hit@3"].tolist() == [0, 1, 0] and backbone["ndcg@5"] == pytest.approx([1 / math.log2(5), 1, 0])
    # alpha 0.5 for user 1: U = -1.5, -2.5, -3.5, -2.5, -5 -> [10, 11, 13, ...]: the target rises to rank 3.
    half = rerank_metrics(lists, aggregate(positions, np.array([0.5, 0.5, 0.5])), (3, 5))
    assert half["hit@3"].tolist() == [1, 1, 0] and half["ndcg@3"] == pytest.approx([0.5, 1, 0])


def test_the_alpha_chosen_on_valid_and_the_groups() -> None:
    lists = _lists()
    rankings = pd.DataFrame({"user_id": [1] * 5, "rank": [1, 2, 3, 4, 5], "item_id": [13, 10, 11, 12, 14]})
    positions, _ = llm_positions(lists, rankings)
    n_train = pd.Series([3, 30, 300], index=[1, 2, 3])
    grid = (0.1, 0.5, 0.9)
    uniform = alpha_options("uniform", n_train, grid)
    assert [s for s, _ in uniform] == [{"alpha": 0.1}, {"alpha": 0.5}, {"alpha": 0.9}]
    settings, alpha, value = choose(lists, positions, uniform, "ndcg@3", (3, 5))
    assert settings == {"alpha": 0.9} and value == pytest.approx((1 + 1) / 3)  # the LLM's rank 1 wins
    adaptive = alpha_options("adaptive", n_train, grid)
    assert len(adaptive) == 9 and adaptive[0][0] == {"alpha1": 0.1, "alpha2": 0.1}
    assert alpha_options("backbone", n_train, grid)[0][1].tolist() == [0.0] * 3
    tail = tail_users(n_train, 0.25)
    assert tail.tolist() == [1]
    groups = group_means(lists, score(lists, positions, alpha, (3,)), tail)
    assert groups["tail"] == {"users": 1, "hit@3": 1.0, "ndcg@3": 1.0}
    assert groups["head"]["users"] == 2 and groups["all"]["hit@3"] == pytest.approx(2 / 3)


def test_a_ranking_that_is_not_a_permutation_is_refused() -> None:
    bad = pd.DataFrame({"user_id": [1] * 5, "rank": [1, 2, 3, 4, 5], "item_id": [13, 13, 11, 12, 14]})
    with pytest.raises(ValueError, match="user 1 is not a permutation"):
        llm_positions(_lists(), bad)


def test_config_keeps_the_metrics_within_the_list() -> None:
    with pytest.raises(ValueError, match="must not exceed k'"):
        Llama4RecRunConfig(candidates={"n_candidates": 4})
    with pytest.raises(ValueError, match="select_metric"):
        Llama4RecConfig(select_metric="recall@5")
    assert Llama4RecRunConfig().split.method == "loo"
    # Greedy decoding by default, also when a deployment's parameters name only the (fine-tuned) model.
    assert Llama4RecRunConfig(llm={"model": "ft:gpt-4o-mini:acme::abc"}).llm.temperature == 0.0


def test_pairs_avoid_training_items_and_do_not_depend_on_other_users() -> None:
    train = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [0, 1, 2, 0]})
    pairs = sample_pairs(train, np.arange(8), pairs_per_user=2, seed=7)
    assert len(pairs) == 4 and (pairs["item_a"] != pairs["item_b"]).all()
    of_1 = pairs[pairs["user_id"] == 1]
    assert not ({*of_1["item_a"], *of_1["item_b"]} & {0, 1, 2})
    alone = sample_pairs(train[train["user_id"] == 1], np.arange(8), pairs_per_user=2, seed=7)
    pd.testing.assert_frame_equal(alone, of_1.reset_index(drop=True))
    few = sample_pairs(train, np.arange(5), pairs_per_user=3, seed=7)  # user 1 has 2 items left: one pair
    assert (few["user_id"] == 1).sum() == 1


def test_the_similar_user_is_never_the_user() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [0.0, 0.0]])
    similar, cosine = most_similar_users(emb, batch_users=2)
    assert similar.tolist() == [1, 0, 3, 2, 0]  # twins pick each other; the zero vector the lowest index
    assert cosine[0] == pytest.approx(1.0) and cosine[4] == pytest.approx(0.0)
    rng = torch.Generator().manual_seed(0)
    many = torch.randn(50, 4, generator=rng)
    assert (most_similar_users(many)[0] != np.arange(50)).all()


def test_augmented_triplets_join_bpr_training() -> None:
    data = checkerboard()
    # User 0 likes items 0..9; 400 triplets say it prefers item 15 (the other group) to its own valid item.
    valid_item = int(data.valid[0, 1])
    planted = AugmentedEdges(np.tile([[0, 15, valid_item]], (400, 1)), data.n_users, data.n_items)
    scores = {}
    for name, augmented in (("plain", None), ("augmented", planted)):
        net = build_model(ModelConfig(name="mf", embedding_dim=16), data, seed=1)
        fit(net, data, quick_cfg(max_epochs=10, batch_size=256, patience=10), EvalConfig(ks=(2,)),
            augmented=augmented)
        with torch.no_grad():
            s = net.full_scores(torch.tensor([0]))[0]
        scores[name] = float(s[15] - s[valid_item])
    assert scores["plain"] < 0 < scores["augmented"]
    other = AugmentedEdges(np.zeros((0, 3), dtype=np.int64), data.n_users + 1, data.n_items)
    with pytest.raises(ValueError, match="different n_users"):
        fit(build_model(ModelConfig(name="mf"), data, seed=1), data, quick_cfg(max_epochs=1), EvalConfig(ks=(2,)),
            augmented=other)
