"""Split integrity, as a kind: no (user, item) pair in two parts of any given split (tabular or LLMRec JSON), cold
users named and left out of evaluation, users too sparse for a computed split named with the split that fits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from recsys.config import SplitConfig
from recsys.data.dataset import Dataset, DenseSplit
from recsys.data.errors import DataError
from recsys.data.loading import make_split
from recsys.data.tabular import empty_items
from recsys.eval.ranking import RankingEvaluator, evaluate
from tests.test_data_split import frame, write_split
from tests.test_metrics import FixedScores

PARTS = {"train": "1,1\n1,2\n1,3\n2,1\n2,2\n2,3\n", "valid": "1,4\n2,4\n", "test": "1,5\n2,5\n"}


def dataset(n_users: int = 3, n_items: int = 8) -> Dataset:
    rows = [(u, i, i) for u in range(1, n_users + 1) for i in range(1, n_items + 1)]
    return Dataset("toy", frame(rows), empty_items(np.arange(1, n_items + 1)), source="toy/interactions.csv")


def given(folder: Path, overlap: str = "error", **parts: str):
    return make_split(dataset(), SplitConfig(method="dir", split_dir=write_split(folder, {**PARTS, **parts}),
                                             overlap=overlap))


@pytest.mark.parametrize(("a", "b", "extra"), [("train", "valid", {"valid": "1,4\n2,4\n1,1\n2,2\n"}),
                                               ("train", "test", {"test": "1,5\n2,5\n1,2\n2,3\n"}),
                                               ("valid", "test", {"test": "1,5\n2,5\n1,4\n2,4\n"})])
def test_shared_pairs_name_both_files_and_the_count(tmp_path, a, b, extra):
    with pytest.raises(DataError) as exc:
        given(tmp_path / "s", **extra)
    message = str(exc.value)
    assert f"{tmp_path / 's' / f'{a}.csv'} and {tmp_path / 's' / f'{b}.csv'} share 2 (user_id, item_id) pair(s)" \
        in message
    assert "--split-overlap drop" in message and exc.value.path == tmp_path / "s" / f"{b}.csv"


def test_drop_removes_shared_pairs_from_the_later_part_and_counts_them(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="llmrec.data"):
        split = given(tmp_path / "s", overlap="drop", valid="1,4\n2,4\n1,1\n", test="1,5\n2,5\n1,4\n2,2\n")
    assert len(split.train) == 6  # train keeps everything
    assert sorted(map(tuple, split.valid.to_numpy().tolist())) == [(1, 4), (2, 4)]
    assert sorted(map(tuple, split.test.to_numpy().tolist())) == [(1, 5), (2, 5)]
    said = [r.getMessage() for r in caplog.records if "dropped them" in r.getMessage()]
    assert len(said) == 3 and any("valid.csv and" in m and "test.csv share 1" in m for m in said)


def test_json_split_overlap_names_the_json_files(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    for name, body in {"train.json": {"0": [1, 2]}, "val.json": {"0": [3]}, "test.json": {"0": [3]}}.items():
        (folder / name).write_text(json.dumps(body))
    with pytest.raises(DataError, match=r"val\.json and .*test\.json share 1"):
        make_split(dataset(), SplitConfig(method="dir", split_dir=folder))


def test_cold_users_are_named_and_a_part_of_only_cold_users_is_refused(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="llmrec.data"):
        given(tmp_path / "a", test="1,5\n3,5\n3,6\n")
    (said,) = [r.getMessage() for r in caplog.records if "cold users" in r.getMessage()]
    assert "1 of 2 user(s) in test" in said and "e.g. user 3" in said and str(tmp_path / "a" / "test.csv") in said
    with pytest.raises(DataError, match="the valid split has only cold users") as exc:
        given(tmp_path / "b", valid="3,4\n")
    assert exc.value.path == tmp_path / "b" / "valid.csv"
    with pytest.raises(DataError, match="the test split has no pairs"):
        given(tmp_path / "c", test="")


@pytest.mark.parametrize("method", ["random", "temporal"])
def test_too_sparse_for_the_split_names_file_count_and_the_split_that_fits(method):
    ds = dataset(n_users=4, n_items=5)  # 5 interactions each: floor(0.1 * 5) = 0 held out
    with pytest.raises(DataError) as exc:
        make_split(ds, SplitConfig(method=method))
    message = str(exc.value)
    assert "4 of 4 users have fewer than 10 interactions" in message and "valid and test would be empty" in message
    assert "--split loo" in message and exc.value.path == Path("toy/interactions.csv")
    split = make_split(ds, SplitConfig(method="loo"))  # the split that fits
    assert len(split.valid) == len(split.test) == 4


def test_no_split_fits_users_with_fewer_than_three_interactions():
    with pytest.raises(DataError, match="no split fits: leave-one-out needs 3 interactions per user"):
        make_split(dataset(n_users=3, n_items=2), SplitConfig(method="loo"))


def test_some_sparse_users_stay_in_train_with_one_warning(caplog):
    rows = [(u, i, i) for u in (1, 2) for i in range(1, 11)] + [(3, 1, 1)]  # user 3: a single interaction
    ds = Dataset("toy", frame(rows), empty_items(np.arange(1, 11)), source="toy/interactions.csv")
    with caplog.at_level(logging.WARNING, logger="llmrec.data"):
        split = make_split(ds, SplitConfig())
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("split: skipping")]
    assert said.startswith("split: skipping 1 user(s) from valid or test") and "e.g. user 3" in said
    assert "toy/interactions.csv" in said
    assert 3 in set(split.train["user_id"]) and 3 not in set(split.valid["user_id"]) | set(split.test["user_id"])


def test_evaluation_leaves_cold_users_out_unless_kept():
    # user 2 has a test item but no train item (cold); user 0 is an ordinary user
    data = DenseSplit(3, 4, np.array([(0, 0), (1, 1)]), np.array([(0, 1), (1, 2)]), np.array([(0, 2), (2, 3)]),
                      user_ids=np.array([10, 11, 99]))
    scores = np.array([[0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 0.9, 0.8, 0.0]])  # user 2 misses its item
    excluded = RankingEvaluator(data, "test", (1,))
    assert excluded.users.tolist() == [0] and excluded.cold_users.tolist() == [2]
    assert data.raw_users(excluded.cold_users).tolist() == [99]
    assert evaluate(FixedScores(scores), data, "test", (1,))["recall@1"] == 1.0
    kept = RankingEvaluator(data, "test", (1,), cold_users="keep")
    assert kept.users.tolist() == [0, 2]
    assert evaluate(FixedScores(scores), data, "test", (1,), cold_users="keep")["recall@1"] == 0.5
    assert RankingEvaluator(data, "valid", (1,)).cold_users.size == 0
