"""The `run` flow end to end (base, augment against the local LLM server, embeddings, LightGCN and LLMRec, report)
on unusual inputs: raw ids across the whole int64 range, degenerate users and items without text. Every id comes
out exactly as it went in; every degenerate user or text-less item is skipped with a warning or listed in
augment_failures, and the run completes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.run import run_flow
from recsys.config import (
    AugmentConfig,
    DataConfig,
    EmbedConfig,
    LLMConfig,
    LLMRecConfig,
    ModelConfig,
    RunConfig,
    SplitConfig,
    TrainConfig,
)
from storage.store import ArtifactStore
from tasks.embed import read_embeddings

N_ITEMS, N_REGULAR = 30, 12
# Item and user ids: the ends of int64, negatives, above int32 and above 2^53 (not exact as a float), sparse.
_rng = np.random.default_rng(15)
ITEMS = [-(2**63), 2**63 - 1, -1, 0, 2**31, 2**53 + 1, -(2**53) - 3,
         *(int(v) for v in _rng.choice(2**62, N_ITEMS - 7, replace=False) - 2**61)]
USERS = [2**63 - 2, -(2**63) + 5, 2**32 + 9, *(int(v) for v in _rng.choice(10**15, N_REGULAR - 3, replace=False))]
NO_TEXT = ITEMS[-3:]  # items whose title is empty
FULL, ONE_LEFT, SINGLE, COLD, TEXTLESS = -77, 2**40, 5, -(2**62), 2**62  # the degenerate users


def write_inputs(folder: Path) -> tuple[Path, Path]:
    """A dataset folder (interactions.csv, items.csv) and a given split (train/valid/test.csv) over it."""
    rng = np.random.default_rng(0)
    train, valid, test = [], [], []
    for u in USERS:  # regular users: 8 train, 2 valid, 2 test items of the items with text
        picked = [ITEMS[i] for i in rng.choice(N_ITEMS - 3, 12, replace=False)]
        train += [(u, i) for i in picked[:8]]
        valid += [(u, i) for i in picked[8:10]]
        test += [(u, i) for i in picked[10:]]
    train += [(FULL, i) for i in ITEMS]  # every item: no negative, no candidate
    train += [(ONE_LEFT, i) for i in ITEMS if i != ITEMS[0]]  # one candidate: no liked-and-disliked pair
    train += [(SINGLE, ITEMS[4])]  # a single interaction
    test += [(COLD, ITEMS[1]), (COLD, ITEMS[2])]  # only in test
    train += [(TEXTLESS, i) for i in NO_TEXT]  # nothing with text in the history
    parts = {name: pd.DataFrame(rows, columns=["user_id", "item_id"])
             for name, rows in (("train", train), ("valid", valid), ("test", test))}
    data, split = folder / "data", folder / "split"
    data.mkdir(parents=True)
    split.mkdir()
    for name, frame in parts.items():
        frame.to_csv(split / f"{name}.csv", index=False)
    pd.concat(parts.values()).to_csv(data / "interactions.csv", index=False)
    titles = ["" if i in NO_TEXT else f"Film {k} ({1950 + k})" for k, i in enumerate(ITEMS)]
    pd.DataFrame({"item_id": ITEMS, "title": titles, "genres": "Drama|Comedy"}).to_csv(data / "items.csv",
                                                                                        index=False)
    return data, split


@pytest.fixture(scope="module")
def run(tmp_path_factory, llm_server):
    folder = tmp_path_factory.mktemp("unusual")
    data, split = write_inputs(folder)
    config = RunConfig(
        data=DataConfig(dataset=str(data)),
        split=SplitConfig(method="dir", split_dir=split),
        model=ModelConfig(name="lightgcn", embedding_dim=8, n_layers=1),
        train=TrainConfig(max_epochs=2, batch_size=64, lr=0.01, device="cpu"),
        llm=LLMConfig(model="llmrec-heuristic", base_url=llm_server.base_url, rpm=None, tpm=None,
                      backoff_initial_s=0.05, backoff_max_s=1.0, timeout_s=20.0),
        augment=AugmentConfig(users_per_batch=50, items_per_batch=50),
        llmrec=LLMRecConfig(embedding_dim=8, n_layers=1),
        embed=EmbedConfig(batch_size=64),
    )
    handler = _Records()
    logging.getLogger().addHandler(handler)
    try:
        result = run_flow(config=config, store_root=str(folder / "store"), out_dir=str(folder / "out"))
    finally:
        logging.getLogger().removeHandler(handler)
    return {"result": result, "out": folder / "out", "store": ArtifactStore(folder / "store"),
            "warnings": [r.getMessage() for r in handler.records if r.levelno >= logging.WARNING]}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_every_int64_id_passes_every_stage(run):
    out, store, refs = run["out"], run["store"], run["result"]["refs"]
    users, items = set(USERS) | {FULL, ONE_LEFT, SINGLE, COLD, TEXTLESS}, set(ITEMS)
    user_map = store.read_table(refs["split"], "user_map")
    assert set(user_map["user_id"]) == users and set(store.read_table(refs["split"], "item_map")["item_id"]) == items
    candidates = store.read_table(refs["candidates"], "candidates")
    assert set(candidates["user_id"]) <= users and set(candidates["item_id"]) <= items
    assert set(USERS) <= set(candidates["user_id"])  # the extreme ids among them
    edges = pd.read_parquet(out / "augment" / "augmented_edges.parquet")
    assert set(edges["user_id"]) == set(USERS) | {SINGLE}
    assert set(edges["pos_item_id"]) | set(edges["neg_item_id"]) <= items - set(NO_TEXT)
    profiles = pd.read_parquet(out / "augment" / "user_profiles.parquet")
    assert set(profiles["user_id"]) == set(USERS) | {FULL, ONE_LEFT, SINGLE}
    attributes = pd.read_parquet(out / "augment" / "item_attributes.parquet")
    assert set(attributes["item_id"]) == items - set(NO_TEXT)
    assert {-(2**63), 2**63 - 1, 2**53 + 1} <= set(attributes["item_id"])
    ids, _ = read_embeddings(store, refs["features"]["user_profile"])
    assert set(ids.tolist()) == set(profiles["user_id"])
    ids, _ = read_embeddings(store, refs["features"]["item_attr_director"])
    assert set(ids.tolist()) == set(attributes["item_id"])
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert set(metrics["variant"]) == {"lightgcn", "llmrec"} and metrics["value"].between(0, 1).all()
    assert "llmrec" in (out / "report.md").read_text()


def test_degenerate_users_are_skipped_and_listed_at_every_stage(run):
    out, warnings = run["out"], run["warnings"]

    def said(prefix: str, user: int) -> str:
        return next(w for w in warnings if w.startswith(prefix) and f"e.g. user {user} " in w)

    assert "1 of" in said("split: 1 of", COLD) and "test.csv" in said("split: 1 of", COLD)
    assert "no negative exists" in said("sampling: skipping 1 user(s)", FULL)
    assert "with no item outside their training items" in said("candidates: skipping 1 user(s)", FULL)
    assert "without a training interaction" in said("candidates: skipping 1 user(s)", COLD)
    assert "from the test metrics" in said("evaluation: skipping 1 user(s)", COLD)
    failures = pd.read_parquet(out / "augment" / "augment_failures.parquet")
    reasons = {(s, k): r for s, k, r in failures[["stage", "key", "reason"]].itertuples(index=False)}
    assert reasons == {
        ("edges", FULL): "not asked: no candidates",
        ("edges", ONE_LEFT): "not asked: fewer than 2 candidates: liked and disliked must differ",
        ("edges", TEXTLESS): "not asked: no training item with text (none of the 3 has a title)",
        ("profiles", TEXTLESS): "not asked: no training item with text (none of the 3 has a title)",
        **{("attributes", i): "not asked: no item text: the item has no title (pass an item table with --items)"
           for i in NO_TEXT},
    }
    assert (failures["asks"] == 0).all()
    assert run["result"]["rows"] == {"edges": N_REGULAR + 1, "profiles": N_REGULAR + 3,
                                     "attributes": N_ITEMS - 3}
