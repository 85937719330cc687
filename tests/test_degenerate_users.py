"""Degenerate users and items without text, stage by stage (recsys/data/degenerate.py): skipped with one warning
naming the user and the file, or a clear DataError; never a bare traceback. The split stage is covered in
tests/test_split_integrity.py, candidates and the augment plan in tests/test_flow_unusual_inputs.py."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from recsys.augment.attributes import augment_attributes
from recsys.augment.edges import augment_edges
from recsys.augment.profiles import augment_profiles
from recsys.augment.prompts import (
    ItemText,
    build_user_contexts,
    edges_messages,
    edges_skip_reason,
    profile_skip_reason,
)
from recsys.config import EvalConfig, ModelConfig, TrainConfig
from recsys.data.dataset import DenseSplit
from recsys.data.errors import DataError
from recsys.models.factory import build_model
from recsys.train.trainer import fit
from tests.test_augment_runner import TAGS, FakeClient

SOURCE = "store/split/abc/train.parquet"


def small(full_users: list[int], n_users: int = 6, n_items: int = 5) -> DenseSplit:
    """Users in `full_users` have every item in train; the others 2 train items, 1 valid, 1 test."""
    train, valid, test = [], [], []
    for u in range(n_users):
        if u in full_users:
            train += [(u, i) for i in range(n_items)]
        else:
            items = [(u + k) % n_items for k in range(4)]
            train += [(u, items[0]), (u, items[1])]
            valid.append((u, items[2]))
            test.append((u, items[3]))
    return DenseSplit(n_users, n_items, np.array(train), np.array(valid).reshape(-1, 2), np.array(test).reshape(-1, 2),
                      user_ids=np.arange(n_users) * 1000 - 2**40, source=SOURCE)


def train_cfg() -> TrainConfig:
    return TrainConfig.for_model("mf", max_epochs=2, batch_size=4, device="cpu")


def test_sampling_leaves_out_users_without_a_negative(caplog):
    data = small(full_users=[1, 4])
    net = build_model(ModelConfig(name="mf", embedding_dim=4), data, seed=0)
    with caplog.at_level(logging.WARNING, logger="llmrec.data"):
        result = fit(net, data, train_cfg(), EvalConfig(ks=(1,)))
    assert result.epochs_run == 2
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sampling:")]
    assert said.startswith("sampling: skipping 2 user(s) from BPR sampling: every item is one of their training items")
    assert f"e.g. user {1000 - 2**40}" in said and SOURCE in said  # the raw id, not the dense one


def test_no_user_with_a_negative_is_a_data_error():
    data = small(full_users=list(range(6)))
    data = DenseSplit(6, 5, data.train, np.array([(0, 0)]), np.zeros((0, 2), np.int64), source=SOURCE)
    net = build_model(ModelConfig(name="mf", embedding_dim=4), data, seed=0)
    with pytest.raises(DataError, match="no user has an item outside their training items") as exc:
        fit(net, data, train_cfg(), EvalConfig(ks=(1,)))
    assert str(exc.value.path) == SOURCE


def items_table(ids: list[int], without_text: set[int]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": pd.Series(ids, dtype="int64"),
                         "title": ["" if i in without_text else f"Film {i}" for i in ids],
                         "year": pd.array([pd.NA] * len(ids), dtype="Int64"), "genres": "", "description": ""})


def test_items_without_text_never_reach_a_prompt_and_say_why_a_user_is_not_asked():
    items = items_table([1, 2, 3, 4, 5, 6], without_text={2, 5, 6})
    train = pd.DataFrame({"user_id": [7, 7, 8, 8, 9], "item_id": [1, 2, 5, 6, 1]})
    cands = pd.DataFrame({"user_id": [7, 7, 7, 9], "rank": [1, 2, 3, 1], "item_id": [5, 3, 4, 6], "score": 0.5})
    u7, u8, u9, u10 = build_user_contexts(train, items, cands, [7, 8, 9, 10], None)
    assert [i.item_id for i in u7.history] == [1] and [i.item_id for i in u7.candidates] == [3, 4]
    assert u7.train_item_ids == {1, 2}  # still forbidden as answers
    assert edges_skip_reason(u7) is None and "Film 5" not in edges_messages(u7)[1]["content"]
    assert edges_messages(u7)[1]["content"].count("\n- ") == 1  # one history line: the item with text
    assert profile_skip_reason(u8) == "no training item with text (none of the 2 has a title)"
    assert edges_skip_reason(u9) == "no candidates"  # its only candidate has no text
    assert profile_skip_reason(u10) == "no training history"
    client = FakeClient(lambda m, n: '{"liked": 0, "disliked": 1}')
    outcomes = augment_edges(client, [u7, u8, u9], max_reasks=0, max_workers=1, tags=TAGS)
    assert [(o.key, o.ok, o.asks) for o in outcomes] == [(7, True, 1), (8, False, 0), (9, False, 0)]
    outcomes = augment_profiles(client, [u8], max_reasks=0, max_workers=1, tags=TAGS)
    assert outcomes[0].reason.startswith("no training item with text") and len(client.calls) == 1


def test_attributes_never_ask_about_an_item_without_text():
    items = [ItemText(-3, "Film -3", None, ""), ItemText(2**62, "", None, ""), ItemText(9, "Film 9", 1999, "")]

    def answer(messages, n):
        asked = [int(x) for x in pd.Series(messages[1]["content"].splitlines()).str.extract(r"^\[(-?\d+)\]")[0]
                 .dropna()]
        return json.dumps({"items": [{"id": i, "director": "A B", "country": "France", "language": "French"}
                                     for i in asked]})

    client = FakeClient(answer)
    outcomes = augment_attributes(client, items, items_per_request=10, max_reasks=0, max_workers=1, tags=TAGS)
    assert [(o.key, o.ok) for o in outcomes] == [(-3, True), (2**62, False), (9, True)]  # input order kept
    assert outcomes[1].reason.startswith("no item text") and outcomes[1].asks == 0
    (call,) = client.calls
    assert f"[{2**62}]" not in call[0][1]["content"] and "[-3] Film -3" in call[0][1]["content"]
