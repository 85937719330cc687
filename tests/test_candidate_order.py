"""Position bias and the shuffled candidate order, over real HTTP on real MovieLens rows.

The base ranker here is popularity: each user's candidates are the 10 most rated movies they have not rated, best
first. The local server's `first_listed_rate` fault makes it pick the first listed candidate as liked and the last
as disliked, as a position-biased LLM would. Listed best first, every liked edge then copies the base ranker's top
pick; shuffled per user, the picks spread over all ten base ranks, and the answers are mapped back to the items
that were listed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from recsys.augment.edges import augment_edges
from recsys.augment.positions import position_table, uniform_p
from recsys.augment.prompts import build_user_contexts
from recsys.augment.runner import edges_frame
from recsys.config import LLMConfig
from recsys.data.movielens import load_ml100k
from recsys.llm.client import LLMClient
from recsys.llm.limits import clear_shared_limiters

if TYPE_CHECKING:
    from llmsim.launch import LLMServer

N_USERS, K = 100, 10


@pytest.fixture(scope="module")
def movielens(ml100k_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train rows, items, popularity candidates) of the first 100 users of ML-100K."""
    ds = load_ml100k(ml100k_dir)
    train = ds.interactions[ds.interactions["user_id"] <= N_USERS]
    popular = ds.interactions["item_id"].value_counts().index.tolist()
    seen = train.groupby("user_id")["item_id"].agg(set)
    rows = [(u, rank, item) for u in seen.index
            for rank, item in enumerate([i for i in popular if i not in seen[u]][:K], start=1)]
    candidates = pd.DataFrame(rows, columns=["user_id", "rank", "item_id"]).assign(score=0.0)
    return train, ds.items, candidates


def contexts(movielens: tuple, seed: int | None) -> list:
    train, items, candidates = movielens
    return build_user_contexts(train, items, candidates, range(1, N_USERS + 1), max_history=5, shuffle_seed=seed)


def test_shuffle_removes_the_correlation_with_the_base_rank(llm_server: LLMServer, tmp_path: Path,
                                                            movielens: tuple) -> None:
    clear_shared_limiters()
    cfg = LLMConfig(model="llmrec-heuristic", base_url=llm_server.base_url, rpm=None, tpm=None)
    llm_server.set_faults(first_listed_rate=1.0)
    frames, shown = {}, {}
    try:
        for name, seed in (("base", None), ("shuffled", 2020)):
            users = shown[name] = contexts(movielens, seed)
            with LLMClient(cfg, cache_dir=tmp_path / name) as client:
                outcomes = augment_edges(client, users, max_reasks=0, max_workers=8, tags={"stage": "edges"})
            assert all(o.ok for o in outcomes)
            frames[name] = edges_frame(outcomes, "m")
    finally:
        llm_server.set_faults()
    _, _, candidates = movielens
    rank_of = candidates.set_index(["user_id", "item_id"])["rank"]
    for name, frame in frames.items():  # the picks are mapped back to the listed items and their base ranks
        assert frame["pos_item_id"].tolist() == [ctx.candidates[0].item_id for ctx in shown[name]]
        assert frame["neg_item_id"].tolist() == [ctx.candidates[-1].item_id for ctx in shown[name]]
        assert (rank_of.loc[list(zip(frame["user_id"], frame["pos_item_id"], strict=True))].to_numpy()
                == frame["pos_rank"].to_numpy()).all()

    base = position_table(frames["base"], K)
    shuffled = position_table(frames["shuffled"], K)
    assert base["liked"].tolist() == [N_USERS] + [0] * (K - 1)  # listed best first: the bias copies the base model
    assert base["disliked"].tolist() == [0] * (K - 1) + [N_USERS]
    assert uniform_p(base["liked"]) < 1e-10
    # Shuffled: the same bias lands on every base rank alike.
    assert shuffled["liked"].max() <= 0.25 * N_USERS and (shuffled["liked"] > 0).sum() >= 8
    assert uniform_p(shuffled["liked"]) > 0.01 and uniform_p(shuffled["disliked"]) > 0.01
