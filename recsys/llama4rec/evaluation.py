"""Llama4Rec's evaluation protocol ([L4R] §5.1): the backbone's top-k' list of each user is re-ranked, and HR@K and
NDCG@K (K in {3, 5}) are read from the final list; alpha1 and alpha2 (or the one alpha of "w/o AA") are chosen on
VALID, from the paper's grid, and TEST is scored once with the chosen values.

An item of the split outside the top-k' list is a miss at every K. HR@K is `hit@K` and NDCG@K is textbook NDCG
(recsys/eval/metrics.py); with leave-one-out each user has one relevant item, so NDCG@K = 1 / log2(rank + 1).
Tail users are those whose training count N(u) is at most the `tail_quantile` quantile over all users; head users
are the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recsys.eval.metrics import per_user_metrics
from recsys.llama4rec.aggregation import adaptive_alpha, aggregate
from recsys.llama4rec.variants import Weighting

PAD = -1  # an empty slot of a list shorter than k'
GROUPS = ("all", "head", "tail")


@dataclass(frozen=True)
class RerankLists:
    """The backbone's top-k' list of every user with an item in one split.

    users: [U] raw user ids; items: [U, k] raw item ids in the backbone's order (PAD where the list is short);
    relevant: [U, k] whether the item is one of the user's items in the split; n_relevant: [U] those items (>= 1).
    """

    users: np.ndarray
    items: np.ndarray
    relevant: np.ndarray
    n_relevant: np.ndarray

    @classmethod
    def build(cls, lists: pd.DataFrame, target: pd.DataFrame, k: int) -> RerankLists:
        """From a long table of lists (user_id, rank 1..k, item_id) and the split's (user_id, item_id) pairs; a
        user of `target` without a list gets an empty one (all misses)."""
        users = np.unique(target["user_id"].to_numpy(np.int64))
        items = np.full((users.size, k), PAD, dtype=np.int64)
        ranked = lists[lists["user_id"].isin(users) & lists["rank"].between(1, k)]
        rows = np.searchsorted(users, ranked["user_id"].to_numpy(np.int64))
        items[rows, ranked["rank"].to_numpy(np.int64) - 1] = ranked["item_id"].to_numpy(np.int64)
        wanted = pd.MultiIndex.from_frame(target[["user_id", "item_id"]].astype("int64"))
        shown = pd.MultiIndex.from_arrays([np.repeat(users, k), items.ravel()])
        relevant = shown.isin(wanted).reshape(users.size, k) & (items != PAD)
        n_relevant = target.groupby("user_id").size().reindex(users).to_numpy(np.int64)
        return cls(users, items, relevant, n_relevant)


def llm_positions(lists: RerankLists, rankings: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """([U, k] 1-based LLM position of each backbone column, [U] whether the LLM answered for the user).

    rankings: (user_id, rank, item_id), the LLM's order of each answered user's list. A user without an answer
    keeps the backbone's positions (the LLM adds nothing for them). Raises ValueError naming the user when an
    answer is not a permutation of that user's list.
    """
    k = lists.items.shape[1]
    positions = np.tile(np.arange(1, k + 1, dtype=np.int64), (lists.users.size, 1))
    answered = np.zeros(lists.users.size, dtype=bool)
    row_of = {int(u): i for i, u in enumerate(lists.users)}
    for user, group in rankings.sort_values(["user_id", "rank"]).groupby("user_id", sort=False):
        row = row_of.get(int(user))
        if row is None:
            continue
        listed = lists.items[row][lists.items[row] != PAD]
        order = group["item_id"].to_numpy(np.int64)
        if sorted(order.tolist()) != sorted(listed.tolist()):
            raise ValueError(f"the LLM ranking of user {int(user)} is not a permutation of the user's list")
        where = {int(item): pos for pos, item in enumerate(order, 1)}
        positions[row, : listed.size] = [where[int(item)] for item in listed]
        answered[row] = True
    return positions, answered


def rerank_metrics(lists: RerankLists, order: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per user hit@K and ndcg@K of the final lists (`order`: [U, k] backbone columns, best first)."""
    hits = np.take_along_axis(lists.relevant, order, axis=1)[:, : max(ks)]
    per_user = per_user_metrics(hits, lists.n_relevant, ks)
    return {name: values for name, values in per_user.items() if name.split("@")[0] in ("hit", "ndcg")}


def alpha_options(weighting: Weighting, n_train: pd.Series, grid: Sequence[float]) -> list[tuple[dict, pd.Series]]:
    """The settings a weighting may choose from, each with alpha per raw user id (index of `n_train`, the
    training counts of ALL users, over which l_max and l_min are taken)."""
    def const(value: float) -> pd.Series:
        return pd.Series(value, index=n_train.index, dtype=np.float64)

    if weighting == "backbone":
        return [({}, const(0.0))]
    if weighting == "llm":
        return [({}, const(1.0))]
    if weighting == "uniform":
        return [({"alpha": a}, const(a)) for a in grid]
    if weighting == "adaptive":
        return [({"alpha1": a1, "alpha2": a2},
                 pd.Series(adaptive_alpha(n_train.to_numpy(), a1, a2), index=n_train.index))
                for a1 in grid for a2 in grid]
    raise ValueError(f"unknown weighting {weighting!r}")


def score(lists: RerankLists, positions: np.ndarray, alpha: pd.Series, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user metrics of the lists re-ranked with `alpha` (per raw user id)."""
    return rerank_metrics(lists, aggregate(positions, alpha.reindex(lists.users).to_numpy()), ks)


def choose(valid: RerankLists, positions: np.ndarray, options: list[tuple[dict, pd.Series]], metric: str,
           ks: Sequence[int]) -> tuple[dict, pd.Series, float]:
    """The option with the best mean `metric` on VALID (the first one on a tie): (its settings, its alpha, the
    value)."""
    best: tuple[dict, pd.Series, float] | None = None
    for settings, alpha in options:
        value = float(score(valid, positions, alpha, ks)[metric].mean())
        if best is None or value > best[2]:
            best = (settings, alpha, value)
    if best is None:
        raise ValueError("no alpha setting to choose from")
    return best


def tail_users(n_train: pd.Series, quantile: float) -> pd.Index:
    """Raw ids of the users whose training count is at most the `quantile` quantile of all users' counts."""
    return n_train.index[n_train <= np.quantile(n_train.to_numpy(), quantile)]


def group_means(lists: RerankLists, per_user: dict[str, np.ndarray], tail: pd.Index) -> dict[str, dict[str, Any]]:
    """{"all" | "head" | "tail": {"users": n, metric: mean}}; an empty group has NaN means."""
    is_tail = np.isin(lists.users, tail.to_numpy())
    out: dict[str, dict[str, Any]] = {}
    for group, mask in (("all", np.ones_like(is_tail)), ("head", ~is_tail), ("tail", is_tail)):
        out[group] = {"users": int(mask.sum()),
                      **{m: float(v[mask].mean()) if mask.any() else float("nan") for m, v in per_user.items()}}
    return out
