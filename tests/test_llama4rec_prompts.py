"""Llama4Rec's prompts and instruction data on real MovieLens rows (no valid or test interaction reaches a history,
no test item reaches the instruction file, the similar user is another user), the validation of ranking and
pairwise answers through the one re-ask loop, and the local server's parsing and heuristics of these prompts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llmsim import ranking as sim
from recsys.augment.pairwise import PairContext, validate_pairwise
from recsys.augment.parse import InvalidAnswer
from recsys.augment.prompts import ItemText, UserContext, item_line, item_texts
from recsys.augment.ranking import RANKING_VERSION, RankingContext, rank_users, rankings_frame, validate_ranking
from recsys.config import DataConfig, SplitConfig
from recsys.data.loading import load_dataset, make_split
from recsys.llama4rec.contexts import chronological, pair_contexts, ranking_contexts
from recsys.llama4rec.instructions import instruction_table
from recsys.llama4rec.pairs import sample_pairs
from tests.test_augment_runner import TAGS, FakeClient

K = 10


@pytest.fixture(scope="module")
def movielens(small_movielens):
    """A leave-one-out split of 60 real users, training rows in time order, and 'backbone' lists that hold the
    user's valid and test items on purpose (a re-ranked list may hold them; a history may not)."""
    ds = load_dataset(DataConfig(dataset=str(small_movielens)))
    split = make_split(ds, SplitConfig(method="loo"))
    train = chronological(split.train, ds.interactions)
    rng = np.random.default_rng(0)
    catalogue = ds.items["item_id"].to_numpy()
    rows = []
    for user, seen in train.groupby("user_id"):
        held = [*split.valid.loc[split.valid["user_id"] == user, "item_id"],
                *split.test.loc[split.test["user_id"] == user, "item_id"]]
        unseen = np.setdiff1d(catalogue, [*seen["item_id"], *held])
        listed = [*held, *rng.choice(unseen, K + 4 - len(held), replace=False)]
        rng.shuffle(listed)
        rows += [(int(user), r, int(i)) for r, i in enumerate(listed, 1)]
    deep = pd.DataFrame(rows, columns=["user_id", "rank", "item_id"])
    users = sorted(train["user_id"].unique())
    similar = {u: users[(i + 1) % len(users)] for i, u in enumerate(users)}
    return {"ds": ds, "split": split, "train": train, "deep": deep, "lists": deep[deep["rank"] <= K],
            "similar": similar, "users": users, "texts": item_texts(ds.items)}


def _lines(m: dict, items) -> set[str]:
    return {item_line(m["texts"][int(i)]) for i in items}


def _history_of(m: dict, user: int) -> set[str]:
    return _lines(m, m["train"].loc[m["train"]["user_id"] == user, "item_id"])


def _held_of(m: dict, user: int, parts=("valid", "test")) -> set[str]:
    held = pd.concat([getattr(m["split"], p) for p in parts])
    return _lines(m, held.loc[held["user_id"] == user, "item_id"]) - _history_of(m, user)  # twins of titles aside


def test_ranking_prompts_show_training_histories_only(movielens) -> None:
    m = movielens
    for augmented in (False, True):
        contexts = ranking_contexts(m["train"], m["ds"].items, m["lists"], m["similar"], m["users"], 20, augmented)
        for ctx in contexts:
            parsed = sim.parse_prompt(ranking_messages_of(ctx))
            user = ctx.user.user_id
            history = {line.text for line in parsed.history}
            assert history and history <= _history_of(m, user)
            assert not history & _held_of(m, user)
            assert len(parsed.candidates) == K  # the held-out items may be candidates: that is what is ranked
            if augmented:
                other = ctx.similar.user_id
                assert other != user and other == m["similar"][user]
                similar = {line.text for line in parsed.similar}
                assert similar and similar <= _history_of(m, other) and not similar & _held_of(m, other)
                assert list(parsed.prediction) == ctx.prediction()
            else:
                assert parsed.similar is None and parsed.prediction is None


def ranking_messages_of(ctx: RankingContext) -> list[dict[str, str]]:
    from recsys.augment.ranking import ranking_messages

    return ranking_messages(ctx)


def test_pairwise_prompts_show_training_histories_and_unseen_pairs(movielens) -> None:
    from recsys.augment.pairwise import pairwise_messages

    m = movielens
    pairs = sample_pairs(m["split"].train, m["ds"].items["item_id"].to_numpy(), 3, seed=1)
    for ctx in pair_contexts(m["train"], m["ds"].items, pairs, m["users"], 20):
        parsed = sim.parse_prompt(pairwise_messages(ctx))
        user = ctx.user.user_id
        history = {line.text for line in parsed.history}
        assert history <= _history_of(m, user) and not history & _held_of(m, user)
        assert len(parsed.pairs) == 3
        trained = set(m["train"].loc[m["train"]["user_id"] == user, "item_id"])
        assert not {i.item_id for pair in ctx.pairs for i in pair} & trained


def test_histories_keep_the_most_recent_training_items(movielens) -> None:
    m = movielens
    user = m["users"][0]
    (ctx,) = ranking_contexts(m["train"], m["ds"].items, m["lists"], m["similar"], [user], 5, augmented=False)
    rows = m["ds"].interactions.merge(m["split"].train, on=["user_id", "item_id"])
    latest = rows[rows["user_id"] == user].sort_values(["timestamp", "item_id"])["item_id"].tail(5).tolist()
    assert [i.item_id for i in ctx.user.history] == latest


def test_the_instruction_file_holds_no_test_item(movielens) -> None:
    m = movielens
    table = instruction_table(m["train"], m["split"].valid, m["split"].test, m["ds"].items, m["deep"], m["similar"],
                              K, 20, seed=3)
    assert set(table["source"]) == {"train", "valid"} and len(table) == 2 * len(m["users"])
    test_of = m["split"].test.groupby("user_id")["item_id"].apply(set)
    valid_of = m["split"].valid.groupby("user_id")["item_id"].apply(set)
    for row in table.to_dict("records"):
        user, target, shown = row["user_id"], row["target_item_id"], list(row["candidate_item_ids"])
        assert len(shown) == K and target in shown and row["similar_user_id"] != user
        assert not set(shown) & test_of[user]
        if row["source"] == "valid":
            assert target in valid_of[user]
        else:
            assert not set(shown) & valid_of[user]
            assert target in set(m["split"].train.loc[m["split"].train["user_id"] == user, "item_id"])
        system, prompt, answer = json.loads(row["messages"])
        parsed = sim.parse_prompt([system, prompt])
        history = {line.text for line in parsed.history}
        assert history <= _history_of(m, user) and not history & _held_of(m, user, ("test",))
        if row["source"] == "train":
            assert item_line(m["texts"][target]) not in history  # the target leaves the history
        ranking = json.loads(answer["content"])["ranking"]
        shown_in_order = sorted(shown)
        assert sorted(ranking) == list(range(K)) and shown_in_order[ranking[0]] == target


def _ctx(k: int = 5) -> RankingContext:
    user = UserContext(1, [ItemText(900, "Seen", 1990, "Drama")],
                       [ItemText(100 + 10 * (k - i), f"Cand {i}", 2000, "Comedy") for i in range(k)])
    return RankingContext(user)  # backbone order: item ids 150, 140, 130, 120, 110; shown order: 110 ... 150


def test_a_partial_ranking_is_completed_in_backbone_order() -> None:
    ctx = _ctx()
    assert [i.item_id for i in ctx.shown()] == [110, 120, 130, 140, 150] and ctx.prediction() == [4, 3, 2, 1, 0]
    assert validate_ranking('{"ranking": [0, 2]}', ctx) == {"item_ids": [110, 130, 150, 140, 120], "completed": 3}
    assert validate_ranking('{"ranking": [4, 3, 2, 1, 0]}', ctx)["completed"] == 0


@pytest.mark.parametrize(("answer", "reason"), [
    ('{"ranking": [0, 1, 1, 2, 3]}', "ranking names candidate 1 twice"),
    ('{"ranking": [0, 5, 1, 2, 3]}', "ranking names 5, which is not a candidate index (0..4)"),
    ('{"ranking": []}', "ranking is empty"),
    ('{"ranking": ["Cand 0"]}', "ranking entry 'Cand 0' is not an integer candidate index"),
    ('{"order": [0]}', "missing field 'ranking'"),
])
def test_a_ranking_that_repeats_or_invents_candidates_is_invalid(answer: str, reason: str) -> None:
    with pytest.raises(InvalidAnswer) as err:
        validate_ranking(answer, _ctx())
    assert str(err.value) == reason


def test_invalid_rankings_are_re_asked_and_the_completion_is_counted() -> None:
    answers = {1: '{"ranking": [0, 0]}', 2: '{"ranking": [7]}', 3: '{"ranking": [4, 0]}'}
    client = FakeClient(lambda messages, n: answers[n])
    (out,) = rank_users(client, [_ctx()], max_reasks=2, max_workers=1, tags=TAGS)
    assert out.ok and out.asks == 3 and out.value == {"item_ids": [150, 110, 140, 130, 120], "completed": 3}
    assert all(call[1] == RANKING_VERSION for call in client.calls) and len(client.forgotten) == 2
    assert "not a candidate index" in client.calls[2][0][-1]["content"]  # the re-ask names what was wrong
    frame = rankings_frame([out], "m")
    assert frame["item_id"].tolist() == [150, 110, 140, 130, 120] and set(frame["completed"]) == {3}
    (failed,) = rank_users(FakeClient(lambda messages, n: '{"ranking": [9]}'), [_ctx()], max_reasks=1,
                           max_workers=1, tags=TAGS)
    assert not failed.ok and failed.asks == 2 and "not a candidate index" in failed.reason
    assert rankings_frame([failed], "m").empty  # the evaluation keeps the backbone's order for this user


def test_pairwise_answers() -> None:
    a, b, c = (ItemText(i, f"Movie {i}", 1995, "Drama") for i in (1, 2, 3))
    ctx = PairContext(UserContext(7, [ItemText(9, "Seen", 1990, "Drama")], [], frozenset({9})), ((a, b), (c, a)))
    assert validate_pairwise('{"preferred": ["B", "a"]}', ctx) == {"triplets": [(2, 1), (3, 1)]}
    for answer, reason in (('{"preferred": ["A"]}', "preferred has 1 entries for 2 pairs"),
                           ('{"preferred": ["A", "C"]}', "preferred entry 1 'C' is not 'A' or 'B'")):
        with pytest.raises(InvalidAnswer, match=reason):
            validate_pairwise(answer, ctx)
    with pytest.raises(ValueError, match="holds a training item"):
        PairContext(ctx.user, ((a, ItemText(9, "Seen", 1990, "Drama")),))


def test_the_local_servers_ranking_and_preference_rules() -> None:
    history = np.array([[1.0, 0.0]])
    candidates = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    assert sim.ranking_order(history, None, candidates, None) == [1, 2, 0]  # by cosine to the history
    # With the prediction [0, 2, 1]: points 2 + 0, 0 + 2, 1 + 1: a three-way tie kept in the prediction's order.
    assert sim.ranking_order(history, None, candidates, (0, 2, 1)) == [0, 2, 1]
    # With the prediction [2, 0, 1]: points 2 + 1, 0 + 2, 1 + 0 -> [2, 1, 0]; a similar user whose taste ranks
    # the candidates (0, 2, 1) adds 0, 1, 0.5: 3, 3, 1.5 -> [2, 0, 1] (the tie in the prediction's order).
    assert sim.ranking_order(history, None, candidates, (2, 0, 1)) == [2, 1, 0]
    assert sim.ranking_order(history, np.array([[0.0, 1.0]]), candidates, (2, 0, 1)) == [2, 0, 1]
    assert sim.ranking_order(np.zeros((0, 2)), None, candidates, None) == [0, 1, 2]
    assert sim.preferred(history, candidates[[0, 1]], candidates[[1, 1]]) == ["B", "A"]
