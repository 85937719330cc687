"""Ranking metrics against hand-computed values, and full-ranking evaluation with masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from recsys.data.dataset import DenseSplit
from recsys.eval.metrics import per_user_metrics, ranking_metrics
from recsys.eval.ranking import InteractionIndex, RankingEvaluator, evaluate
from recsys.models.base import Recommender


def d(rank: int) -> float:
    """Discount of a hit at 1-based rank."""
    return 1 / math.log2(rank + 1)


# user 0: |R| = 2 (< K for K = 3, 5; > K for K = 1), hits at ranks 1 and 3
# user 1: |R| = 4, a single hit at rank 5
# user 2: |R| = 10 (> every K), hits at ranks 2..5
HITS = np.array(
    [
        [1, 0, 1, 0, 0],
        [0, 0, 0, 0, 1],
        [0, 1, 1, 1, 1],
    ],
    dtype=bool,
)
N_REL = np.array([2, 4, 10])
KS = (1, 3, 5)


def test_per_user_values_by_hand() -> None:
    m = per_user_metrics(HITS, N_REL, KS)
    expected = {
        "recall@1": [1 / 2, 0, 0],
        "recall@3": [2 / 2, 0, 2 / 10],
        "recall@5": [2 / 2, 1 / 4, 4 / 10],
        "precision@1": [1, 0, 0],
        "precision@3": [2 / 3, 0, 2 / 3],
        "precision@5": [2 / 5, 1 / 5, 4 / 5],
        "hit@1": [1, 0, 0],
        "hit@3": [1, 0, 1],
        "hit@5": [1, 1, 1],
        # IDCG runs over min(|R(u)|, K) ranks
        "ndcg@1": [1 / 1, 0, 0],
        "ndcg@3": [(d(1) + d(3)) / (d(1) + d(2)), 0, (d(2) + d(3)) / (d(1) + d(2) + d(3))],
        "ndcg@5": [
            (d(1) + d(3)) / (d(1) + d(2)),
            d(5) / (d(1) + d(2) + d(3) + d(4)),
            (d(2) + d(3) + d(4) + d(5)) / (d(1) + d(2) + d(3) + d(4) + d(5)),
        ],
        # official: IDCG over min(hits retrieved in the top 5, K) ranks (user 0: 2, user 1: 1, user 2: 4)
        "ndcg_official@1": [1 / 1, 0, 0],
        "ndcg_official@3": [(d(1) + d(3)) / (d(1) + d(2)), 0, (d(2) + d(3)) / (d(1) + d(2) + d(3))],
        "ndcg_official@5": [
            (d(1) + d(3)) / (d(1) + d(2)),
            d(5) / d(1),
            (d(2) + d(3) + d(4) + d(5)) / (d(1) + d(2) + d(3) + d(4)),
        ],
    }
    assert set(m) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(m[name], values, rtol=1e-12, err_msg=name)


def test_means_and_key_names() -> None:
    m = ranking_metrics(HITS, N_REL, KS)
    assert set(m) == {f"{n}@{k}" for n in ("recall", "ndcg", "precision", "hit", "ndcg_official") for k in KS}
    assert m["recall@5"] == pytest.approx((1 + 1 / 4 + 4 / 10) / 3)
    assert m["precision@3"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert m["hit@3"] == pytest.approx(2 / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    # a concrete number, so a change in the discount base or the IDCG would show
    assert m["ndcg@5"] == pytest.approx(0.57719, abs=1e-5)


def test_k_beyond_hit_columns_counts_as_misses() -> None:
    m = ranking_metrics(np.array([[True, False]]), np.array([3]), (2, 4))
    assert m["recall@4"] == pytest.approx(1 / 3)
    assert m["precision@4"] == pytest.approx(1 / 4)
    assert m["ndcg@4"] == pytest.approx(1 / (d(1) + d(2) + d(3)))


def test_official_ndcg_differs_from_textbook_by_hand() -> None:
    # |R| = 3, top-4 list with one hit at rank 2. Textbook IDCG@2 = 1 + 1/log2(3) (two relevant items could fill
    # the top 2); the official IDCG@2 comes from the retrieved hits only: one hit -> IDCG = 1.
    m = ranking_metrics(np.array([[False, True, False, False]]), np.array([3]), (2, 4))
    assert m["ndcg@2"] == pytest.approx(0.6309298 / 1.6309298, abs=1e-6)
    assert m["ndcg_official@2"] == pytest.approx(0.6309298, abs=1e-6)
    assert m["ndcg_official@4"] == pytest.approx(0.6309298, abs=1e-6)  # still one retrieved hit
    assert m["ndcg@4"] == pytest.approx(0.6309298 / (1 + 0.6309298 + 0.5), abs=1e-6)
    # no hit in the retrieved list: 0, not NaN
    assert ranking_metrics(np.array([[False, False]]), np.array([1]), (2,))["ndcg_official@2"] == 0.0


def test_bad_inputs_fail() -> None:
    with pytest.raises(ValueError):
        ranking_metrics(HITS, np.array([2, 0, 10]), KS)  # a user with nothing relevant
    with pytest.raises(ValueError):
        ranking_metrics(HITS, np.array([2, 4]), KS)  # shape mismatch
    with pytest.raises(ValueError):
        ranking_metrics(HITS, np.array([1, 4, 10]), KS)  # 2 hits but 1 relevant


class FixedScores(Recommender):
    """A model whose score matrix is given: user embedding = score row, item embedding = one-hot."""

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__(*scores.shape)
        self.u = nn.Parameter(torch.tensor(scores, dtype=torch.float32))
        self.i = nn.Parameter(torch.eye(scores.shape[1]))

    def ego_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.u, self.i

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.u, self.i


def _pairs(*p: tuple[int, int]) -> np.ndarray:
    return np.array(p, dtype=np.int64).reshape(-1, 2)


def test_evaluate_masks_known_items_and_skips_users() -> None:
    # 3 users, 5 items; scores rank items 0 > 1 > 2 > 3 > 4 for everyone.
    scores = np.tile(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), (3, 1))
    data = DenseSplit(
        3, 5,
        train=_pairs((0, 0), (1, 0), (2, 4)),
        valid=_pairs((0, 1), (1, 3)),  # user 2 has no valid item -> skipped for valid
        test=_pairs((0, 2), (1, 1), (2, 0)),
    )
    model = FixedScores(scores)
    v = evaluate(model, data, "valid", (1, 2))
    # valid ranking masks train only: user 0 -> [1, 2, ...] hit at 1; user 1 -> [1, 2, 3] hit at 3
    assert v["hit@1"] == pytest.approx(1 / 2)
    assert v["recall@2"] == pytest.approx(1 / 2)
    t = evaluate(model, data, "test", (1,), batch_users=1)
    # test ranking masks train and valid: user 0 -> [2, ...] hit; user 1 -> [1, ...] hit; user 2 -> [0, ...] hit
    assert t["hit@1"] == 1.0
    assert model.training  # evaluation restores the mode it found


def test_evaluator_is_reusable_and_handles_k_above_n_items() -> None:
    scores = np.array([[1.0, 2.0, 3.0]])
    data = DenseSplit(1, 3, train=_pairs((0, 2)), valid=_pairs((0, 0)), test=_pairs((0, 1)))
    ev = RankingEvaluator(data, "valid", (1, 10))
    a, b = ev(FixedScores(scores)), ev(FixedScores(scores))
    assert a == b
    assert a["recall@10"] == 1.0 and a["hit@1"] == 0.0  # item 1 outranks item 0; item 2 is masked
    assert a["precision@10"] == pytest.approx(1 / 10)


def test_masked_item_never_counts_as_hit() -> None:
    # item 2 is both a train and a valid item: masked, so it can fill a top-K slot (K > items left) but never hit
    data = DenseSplit(1, 3, train=_pairs((0, 2)), valid=_pairs((0, 0), (0, 2)), test=_pairs((0, 1)))
    m = evaluate(FixedScores(np.array([[1.0, 2.0, 3.0]])), data, "valid", (3,))
    assert m["recall@3"] == pytest.approx(1 / 2)


def test_interaction_index_coords() -> None:
    idx = InteractionIndex(4, _pairs((2, 1), (0, 3), (2, 0)), _pairs((2, 1), (3, 2)))
    rows, cols = idx.coords(np.array([2, 1, 0]))
    assert rows.tolist() == [0, 0, 2] and cols.tolist() == [0, 1, 3]
    assert idx.counts(np.arange(4)).tolist() == [1, 0, 2, 1]
