"""Top-K ranking metrics from a hit matrix (textbook definitions, as in the reference protocol and RecBole).

hits: bool [U, K_max], hits[u, r] is True when the item ranked r+1 for user u is relevant.
n_relevant: [U], |R(u)| >= 1, the number of relevant items of each user in the evaluated split.

  recall@K    = hits in top K / |R(u)|
  precision@K = hits in top K / K
  ndcg@K      = sum over hits at rank i <= K of 1/log2(i+1), over the same sum for ranks 1..min(|R(u)|, K)
  hit@K       = 1 if any hit in top K
  ndcg_official@K = the same DCG over the IDCG of the user's *retrieved* hits: sort the hit vector of the top
                max(ks) list, i.e. 1/log2(i+1) summed over ranks 1..min(hits in the top max(ks), K); 0 with no
                hit. This is the NGCF / LATTICE lineage's definition, used by the official LLMRec code and its
                paper's numbers; it is higher than textbook NDCG and not comparable with it.
Each is averaged over users with a plain mean. Early stopping monitors the textbook ndcg.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("recall", "ndcg", "precision", "hit", "ndcg_official")


def _check(hits: np.ndarray, n_relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hits = np.asarray(hits, dtype=bool)
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    if hits.ndim != 2 or n_relevant.shape != (hits.shape[0],):
        raise ValueError(f"hits must be [U, K] and n_relevant [U]; got {hits.shape} and {n_relevant.shape}")
    if (n_relevant < 1).any():
        raise ValueError("every evaluated user needs at least one relevant item")
    if (hits.sum(axis=1) > n_relevant).any():
        raise ValueError("a user has more hits than relevant items")
    return hits, n_relevant


def per_user_metrics(hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Every metric at every K, per user: {"recall@20": float64 [U], ...}.

    K may exceed hits.shape[1] (e.g. more K than items); the missing ranks count as misses.
    """
    hits, n_relevant = _check(hits, n_relevant)
    k_max = max(ks)
    if hits.shape[1] < k_max:  # pad with misses so every K slices the same way
        hits = np.pad(hits, ((0, 0), (0, k_max - hits.shape[1])))
    discounts = 1.0 / np.log2(np.arange(2, k_max + 2))
    ideal = np.cumsum(discounts)  # ideal[m-1] = best DCG with m relevant items
    cum_hits = np.cumsum(hits, axis=1)
    cum_dcg = np.cumsum(hits * discounts, axis=1)
    retrieved = cum_hits[:, k_max - 1]  # hits in the whole top max(ks) list: the official IDCG's length
    out: dict[str, np.ndarray] = {}
    for k in ks:
        n_hit = cum_hits[:, k - 1].astype(np.float64)
        out[f"recall@{k}"] = n_hit / n_relevant
        out[f"ndcg@{k}"] = cum_dcg[:, k - 1] / ideal[np.minimum(n_relevant, k) - 1]
        out[f"precision@{k}"] = n_hit / k
        out[f"hit@{k}"] = (n_hit > 0).astype(np.float64)
        official_idcg = np.where(retrieved > 0, ideal[np.maximum(np.minimum(retrieved, k), 1) - 1], 1.0)
        out[f"ndcg_official@{k}"] = cum_dcg[:, k - 1] / official_idcg  # DCG is 0 where nothing was retrieved
    return out


def ranking_metrics(hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Mean over users of every metric at every K: {"recall@20": 0.36, "ndcg@20": 0.30, ...}.

    With no users at all every value is NaN (there is nothing to average).
    """
    if len(ks) == 0 or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    return user_means(per_user_metrics(hits, n_relevant, ks))


def user_means(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """The plain mean over users of each per-user metric (NaN when there are no users)."""
    return {name: float(v.mean()) if v.size else float("nan") for name, v in per_user.items()}
