"""LLM4IDRec data: prompts and their token budget, the prefix sampler on a planted history, the chat JSONL files
(format rules, held-out part, no valid or test pair), parsing of generations, the base-rank filter and the merge."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys.llm.tokens import count_tokens
from recsys.llm4idrec.jsonl import format_errors, record_pairs, split_records, to_jsonl
from recsys.llm4idrec.merge import base_rank_filter, merge_setwise, score_ranks
from recsys.llm4idrec.parse import parse_generation, parse_user
from recsys.llm4idrec.prompts import cut_history, prompt_text
from recsys.llm4idrec.samples import full_list_samples, prefix_samples, training_histories


def test_prompt_is_the_official_template():
    assert prompt_text(123, [5, 9, 42]) == (
        "Given the user(u123)'s clicked list items:i5,i9,i42, predict what is the list items to recommend to the "
        "user(u123). Please only answer the item IDs.")


def test_history_cut_keeps_the_longest_tail_that_fits():
    history = list(range(1000, 1400))
    full = count_tokens(prompt_text(7, history))
    budget = full // 2
    kept = cut_history(7, history, budget)
    assert 0 < len(kept) < len(history) and kept == tuple(history[-len(kept):])
    assert count_tokens(prompt_text(7, kept)) <= budget
    assert count_tokens(prompt_text(7, history[-len(kept) - 1:])) > budget  # one more would not fit
    assert cut_history(7, history, budget) == kept  # deterministic
    assert cut_history(7, history, full) == tuple(history)
    assert cut_history(7, history, 5) == ()


def test_prefix_sampler_on_a_planted_history():
    planted = {1: (10, 11, 12, 13, 14, 15, 16), 2: (20, 21, 22), 3: (30, 31)}  # user 3 has < 3 items
    samples = prefix_samples(planted, seed=5)
    by_user = {u: [s for s in samples if s.user_id == u] for u in planted}
    assert len(by_user[1]) == 20 and len(by_user[2]) == 20 and by_user[3] == []
    for u, items in ((1, planted[1]), (2, planted[2])):
        lengths = set()
        for s in by_user[u]:
            assert sorted(s.history + s.target) == sorted(items)  # a partition of the user's items
            assert 1 <= len(s.history) <= len(items) - 2
            lengths.add(len(s.history))
        assert lengths == set(range(1, len(items) - 1)) if u == 2 else len(lengths) >= 3
    # Every prefix length of user 1 (n = 7: L in 1..5) appears about equally often over many draws.
    many = prefix_samples({1: planted[1]}, per_user=5000, seed=1)
    counts = np.bincount([len(s.history) for s in many], minlength=6)[1:]
    assert counts.min() > 850 and counts.max() < 1150
    assert prefix_samples(planted, seed=5) == samples  # seeded
    assert prefix_samples({1: planted[1]}, seed=5) == by_user[1]  # a user's draws do not depend on others
    with pytest.raises(ValueError, match="min_items"):
        prefix_samples(planted, min_items=2)


def test_full_list_variant():
    samples = full_list_samples({1: (4, 5, 6), 2: (7, 8)})
    assert [(s.user_id, s.history, s.target) for s in samples] == [(1, (), (4, 5, 6))]


@pytest.fixture(scope="module")
def reference_split(reference_split_dir):
    return {p: pd.read_parquet(reference_split_dir / f"{p}.parquet") for p in ("train", "valid", "test")}


def test_jsonl_files_have_no_valid_or_test_pair_and_follow_the_format(reference_split):
    train = reference_split["train"]
    users = sorted(train["user_id"].unique())[:40]
    histories = training_histories(train[train["user_id"].isin(users)])
    samples = prefix_samples(histories, per_user=3) + full_list_samples(histories)
    fit, held = split_records(samples, 256, 0.1, seed=3)
    assert len(held) > 0 and len(fit) > len(held)
    held_users = {parse_user(r["messages"][0]["content"]) for r in held}
    assert held_users.isdisjoint(parse_user(r["messages"][0]["content"]) for r in fit)
    assert all(count_tokens(r["messages"][0]["content"]) <= 256 for r in fit + held)
    written = set().union(*(record_pairs(r) for r in fit + held))
    train_pairs = set(zip(train["user_id"], train["item_id"], strict=True))
    assert written and written <= train_pairs
    for part in ("valid", "test"):
        other = set(zip(reference_split[part]["user_id"], reference_split[part]["item_id"], strict=True))
        assert written.isdisjoint(other)
    for text in (to_jsonl(fit), to_jsonl(held)):
        assert format_errors(text) == []


def test_format_rules_name_the_line():
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert format_errors("") == ["file: no examples"]
    assert format_errors(good + "\n{oops\n") == ["line 2: not JSON (Expecting property name enclosed in double "
                                                 "quotes)"]
    no_answer = json.dumps({"messages": [{"role": "user", "content": "q"}]})
    bad_role = json.dumps({"messages": [{"role": "bot", "content": "q"}]})
    assert format_errors(f"{good}\n{no_answer}\n{bad_role}") == [
        "line 2: no assistant message", "line 3: message role must be one of system, user, assistant"]


def test_parsing_keeps_catalogue_items_new_to_the_user_and_counts_drops():
    parsed = parse_generation("i5, i7,i9 ,i5 ,i999,item3, i2;i11.\n foo", history={7}, catalogue={2, 5, 7, 9, 11})
    assert parsed.items == [5, 9, 2, 11]
    assert dict(parsed.dropped) == {"in_history": 1, "repeated": 1, "not_in_catalogue": 1, "unparsable": 2}
    assert parsed.pieces == 9
    assert parse_generation("", {1}, {1}).pieces == 0


def test_base_rank_filter_and_setwise_merge():
    scores = np.array([[0.9, 0.1, 0.5, 0.7], [0.2, 0.8, 0.4, 0.6]])
    mask = np.array([[True, False, False, False], [False, False, False, False]])
    ranks = score_ranks(scores, mask)
    assert ranks.tolist() == [[3, 2, 1, 0], [3, 0, 2, 1]]
    pairs = pd.DataFrame({"uid": [0, 0, 1, 1], "iid": [3, 1, 1, 0]})
    assert base_rank_filter(pairs, ranks, 2).values.tolist() == [[0, 3], [1, 1]]
    train = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 10]})
    gen = pd.DataFrame({"user_id": [2, 1, 2, 2], "item_id": [12, 11, 12, 10]})
    merged, added = merge_setwise(train, gen)
    assert added == 1 and merged.values.tolist() == [[1, 10], [1, 11], [2, 10], [2, 12]]
