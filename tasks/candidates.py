"""Prefect task: top-|C| unseen items per user from the trained base model (input of the LLM stages)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import get_run_logger

from recsys.candidates import top_candidates
from recsys.config import CandidateConfig, ModelConfig
from recsys.data.degenerate import warn_skipped
from storage.store import ArtifactStore
from tasks.common import read_dense_split, stage_ref, stage_task
from tasks.train import load_trained


def candidates_frame(users: np.ndarray, items: np.ndarray, scores: np.ndarray, user_ids: np.ndarray,
                     item_ids: np.ndarray) -> pd.DataFrame:
    """Long table (user_id, rank, item_id, score) in raw ids; padded slots (item -1) are dropped."""
    n = items.shape[1]
    valid = items >= 0
    rows_user = np.repeat(users, n).reshape(items.shape)
    ranks = np.tile(np.arange(1, n + 1, dtype=np.int64), (items.shape[0], 1))
    return pd.DataFrame({
        "user_id": user_ids[rows_user[valid]],
        "rank": ranks[valid],
        "item_id": item_ids[items[valid]],
        "score": scores[valid].astype(np.float32),
    })


@stage_task("candidates", name="candidates")
def generate_candidates(store_root: str, split_ref: str, train_ref: str, model: ModelConfig,
                        candidates: CandidateConfig, device: str = "auto") -> str:
    """Write candidates.parquet (user_id, rank, item_id, score) with raw ids; returns the ref. Users without a
    training interaction (an untrained embedding proposes nothing) and users with no item outside their training
    items get no rows, each kind named in one warning (recsys/data/degenerate.py)."""
    store = ArtifactStore(store_root)
    params = {"split_ref": split_ref, "train_ref": train_ref, "model": model, "candidates": candidates,
              "device": device}
    ref = stage_ref("candidates", params)
    data, ids = read_dense_split(store, split_ref)
    net = load_trained(store, train_ref, model, data, device)
    logger = get_run_logger()
    users, items, scores = top_candidates(net, data, candidates.n_candidates)
    trained = np.bincount(data.train[:, 0], minlength=data.n_users)[users] > 0
    warn_skipped("candidates", data.raw_users(users[~trained]), "without a training interaction (their embedding "
                 "was never trained)", data.source, logger)
    warn_skipped("candidates", data.raw_users(users[trained & (items[:, 0] < 0)]), "with no item outside their "
                 "training items", data.source, logger)
    frame = candidates_frame(users[trained], items[trained], scores[trained], ids.user_ids, ids.item_ids)
    with store.write(ref.stage, ref.key, params) as w:
        w.table("candidates", frame)
    logger.info("candidates: %d users x up to %d items", frame["user_id"].nunique(), candidates.n_candidates)
    return str(ref)
