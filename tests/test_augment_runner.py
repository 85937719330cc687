"""The ask-validate-re-ask loop, concurrency, the three augmentors and their output tables, with a scripted client.

The fake implements the ChatClient protocol (chat + forget) and answers from a script; the real client and server
are tested together elsewhere.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pytest

from recsys.augment.attributes import augment_attributes
from recsys.augment.edges import augment_edges
from recsys.augment.profiles import augment_profiles
from recsys.augment.prompts import (
    ATTRIBUTES_VERSION,
    EDGES_VERSION,
    ItemText,
    UserContext,
    attributes_messages,
    edges_messages,
)
from recsys.augment.runner import (
    ItemOutcome,
    attributes_frame,
    edges_frame,
    failures_frame,
    profiles_frame,
)
from recsys.llm.cache import prompt_hash

TAGS = {"stage": "test", "batch": "0"}
PROFILE = {"age": 30, "gender": "male", "liked_genres": ["Drama"], "disliked_genres": ["Horror"],
           "liked_directors": [], "country": "France", "language": "French"}


@dataclass(frozen=True)
class ChatResult:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    attempts: int = 1
    latency_s: float = 0.0
    error: str | None = None


Script = Callable[[list[dict[str, str]], int], "str | ChatResult"]


class FakeClient:
    """Answers `script(messages, n-th call for this first prompt)`; records every call and every forget."""

    def __init__(self, script: Script, delay_s: float = 0.0) -> None:
        self.script = script
        self.delay_s = delay_s
        self.calls: list[tuple[list[dict[str, str]], str, dict[str, str] | None]] = []
        self.forgotten: list[tuple[str, str]] = []
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def chat(self, messages: list[dict[str, str]], *, template_version: str,
             tags: dict[str, str] | None = None) -> ChatResult:
        with self._lock:
            self.calls.append(([dict(m) for m in messages], template_version, tags))
            first = prompt_hash(messages[:2])
            n = self._seen[first] = self._seen.get(first, 0) + 1
        if self.delay_s:
            time.sleep(self.delay_s)
        answer = self.script(messages, n)
        return answer if isinstance(answer, ChatResult) else ChatResult(text=answer)

    def forget(self, messages: list[dict[str, str]], template_version: str) -> None:
        with self._lock:
            self.forgotten.append((prompt_hash(messages), template_version))


def _user(uid: int, n_cands: int = 5) -> UserContext:
    return UserContext(
        user_id=uid,
        history=[ItemText(1000 + uid, f"Seen {uid}", 1990, "Drama")],
        candidates=[ItemText(uid * 100 + i, f"Cand {uid}-{i}", 2000, "Comedy") for i in range(n_cands)],
        train_item_ids=frozenset({1000 + uid}),
    )


def _uid_of(messages: list[dict[str, str]]) -> int:
    return int(re.search(r"Seen (\d+)", messages[1]["content"]).group(1))


def test_malformed_then_valid_is_ok_after_two_asks_and_forgets(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient(lambda m, n: "Sure, I like the first one!" if n == 1 else '{"liked": 1, "disliked": 4}')
    with caplog.at_level(logging.WARNING, logger="llmrec.augment"):
        (out,) = augment_edges(client, [_user(3)], max_reasks=2, max_workers=1, tags=TAGS)
    first = edges_messages(_user(3))
    value = {"pos_item_id": 301, "neg_item_id": 304, "pos_rank": 2, "neg_rank": 5}
    assert out == ItemOutcome(key=3, ok=True, value=value,
                              raw='{"liked": 1, "disliked": 4}', reason=None, asks=2, prompt_hash=prompt_hash(first))
    assert client.forgotten == [(prompt_hash(first), EDGES_VERSION)]
    re_ask = client.calls[1][0]
    assert re_ask[:2] == first and [m["role"] for m in re_ask] == ["system", "user", "assistant", "user"]
    assert re_ask[2]["content"] == "Sure, I like the first one!"
    assert re_ask[3]["content"] == ("Your answer was invalid: answer is not JSON: no '{' found. "
                                    "Answer again with JSON only in the required format.")
    assert all(call[1] == EDGES_VERSION and call[2] == TAGS for call in client.calls)
    (record,) = [r for r in caplog.records if r.name == "llmrec.augment"]
    assert record.levelno == logging.WARNING and "3" in record.getMessage() and "no '{' found" in record.getMessage()


def test_always_malformed_fails_after_bounded_asks_keeping_raw() -> None:
    client = FakeClient(lambda m, n: f"nonsense {n}")
    (out,) = augment_profiles(client, [_user(1)], max_reasks=3, max_workers=1, tags=TAGS)
    assert not out.ok and out.value is None
    assert out.asks == 4 and len(client.calls) == 4 and len(client.forgotten) == 4
    assert out.raw == "nonsense 4"
    assert out.reason == "invalid after 4 answers: answer is not JSON: no '{' found"
    assert len(client.calls[-1][0]) == 2 + 2 * 3  # the conversation grows by one answer and one correction per re-ask


def test_zero_reasks_means_one_ask() -> None:
    client = FakeClient(lambda m, n: "{}")
    (out,) = augment_profiles(client, [_user(1)], max_reasks=0, max_workers=1, tags=TAGS)
    assert (out.ok, out.asks, out.reason) == (False, 1, "invalid after 1 answer: missing field 'age'")


def test_transport_failure_fails_without_reask() -> None:
    client = FakeClient(lambda m, n: ChatResult(text=None, attempts=6, error="HTTP 500 after 6 attempts"))
    (out,) = augment_edges(client, [_user(2)], max_reasks=2, max_workers=1, tags=TAGS)
    assert (out.ok, out.reason, out.asks, out.raw) == (False, "HTTP 500 after 6 attempts", 1, None)
    assert len(client.calls) == 1 and client.forgotten == []


def test_transport_failure_on_a_reask_keeps_the_last_answer() -> None:
    client = FakeClient(lambda m, n: '{"liked": 9, "disliked": 0}' if n == 1 else ChatResult(None, error="timeout"))
    (out,) = augment_edges(client, [_user(2)], max_reasks=2, max_workers=1, tags=TAGS)
    assert (out.ok, out.reason, out.asks, out.raw) == (False, "timeout", 2, '{"liked": 9, "disliked": 0}')


def test_edges_reject_history_and_out_of_range_answers() -> None:
    ctx = UserContext(5, [ItemText(7, "Seen 5", 1990, "Drama")], [ItemText(7, "Seen again", 1990, "Drama"),
                                                                  ItemText(8, "New", 2000, ""),
                                                                  ItemText(9, "Newer", 2001, "")])
    answers = ['{"liked": 0, "disliked": 1}', '{"liked": 1, "disliked": 3}', '{"liked": 2, "disliked": 1}']
    client = FakeClient(lambda m, n: answers[n - 1])
    (out,) = augment_edges(client, [ctx], max_reasks=2, max_workers=1, tags=TAGS)
    assert out.ok and out.value == {"pos_item_id": 9, "neg_item_id": 8, "pos_rank": 3, "neg_rank": 2}
    assert out.asks == 3
    corrections = [call[0][-1]["content"] for call in client.calls[1:]]
    assert "liked item 7 is in the user's training history" in corrections[0]
    assert "disliked index 3 is outside the candidate list 0..2" in corrections[1]

    stubborn = FakeClient(lambda m, n: '{"liked": 0, "disliked": 1}')
    (bad,) = augment_edges(stubborn, [ctx], max_reasks=1, max_workers=1, tags=TAGS)
    assert not bad.ok and bad.reason == "invalid after 2 answers: liked item 7 is in the user's training history"


def test_users_without_candidates_or_history_fail_without_a_call() -> None:
    client = FakeClient(lambda m, n: '{"liked": 0, "disliked": 1}')
    users = [UserContext(1, _user(1).history, []), _user(2, n_cands=1), UserContext(3, [], _user(3).candidates),
             _user(4)]
    out = augment_edges(client, users, max_reasks=2, max_workers=2, tags=TAGS)
    assert [(o.key, o.ok, o.asks, o.prompt_hash) for o in out[:3]] == [(1, False, 0, None), (2, False, 0, None),
                                                                       (3, False, 0, None)]
    assert [o.reason for o in out[:3]] == ["no candidates", "fewer than 2 candidates: liked and disliked must differ",
                                           "no training history"]
    assert out[3].ok and len(client.calls) == 1
    (profile,) = augment_profiles(client, [UserContext(9, [], [])], max_reasks=1, max_workers=1, tags=TAGS)
    assert profile.reason == "no training history" and len(client.calls) == 1


def test_concurrency_keeps_input_order_and_one_outcome_per_key() -> None:
    active, peak, lock = [0], [0], threading.Lock()

    def script(messages: list[dict[str, str]], n: int) -> str:
        uid = _uid_of(messages)
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.002 * (uid % 5))  # later users often finish first
        with lock:
            active[0] -= 1
        if uid % 7 == 0:
            return "junk"
        if uid % 5 == 0 and n == 1:
            return '{"liked": 0, "disliked": 0}'
        return json.dumps({**PROFILE, "age": 10 + uid % 80})

    users = [_user(u) for u in range(60, 0, -1)]
    client = FakeClient(script)
    out = augment_profiles(client, users, max_reasks=1, max_workers=8, tags=TAGS)
    assert [o.key for o in out] == list(range(60, 0, -1))
    assert 1 < peak[0] <= 8
    for o in out:
        assert o.ok == (o.key % 7 != 0)
        assert o.asks == (2 if o.key % 7 == 0 or o.key % 5 == 0 else 1)
        if o.ok:
            assert o.value["age"] == 10 + o.key % 80
    with pytest.raises(ValueError, match="duplicate keys"):
        augment_profiles(client, [_user(1), _user(1)], max_reasks=1, max_workers=2, tags=TAGS)
    assert augment_edges(client, [], max_reasks=1, max_workers=4, tags=TAGS) == []


def _asked_ids(messages: list[dict[str, str]]) -> list[int]:
    return [int(x) for x in re.findall(r"^\[(\d+)\]", messages[1]["content"], flags=re.M)]


def _attrs(ids: list[int]) -> str:
    return json.dumps({"items": [{"id": i, "director": f"D{i}", "country": "Italy", "language": "Italian"}
                                 for i in ids]})


def test_attributes_partial_answer_reasks_only_missing_ids() -> None:
    items = [ItemText(i, f"Film {i}", 1960, "Western") for i in range(1, 8)]

    def script(messages: list[dict[str, str]], n: int) -> str:
        ids = _asked_ids(messages)
        if ids == [1, 2, 3]:
            return "```json\n" + _attrs([1, 3]) + "\n```"  # 2 missing
        if ids == [4, 5, 6]:
            return _attrs([4, 5, 6]).replace('"D5"', '""')  # 5 invalid
        return _attrs(ids)

    client = FakeClient(script)
    out = augment_attributes(client, items, items_per_request=3, max_reasks=2, max_workers=3, tags=TAGS)
    assert [o.key for o in out] == list(range(1, 8)) and all(o.ok for o in out)
    assert sorted(_asked_ids(c[0]) for c in client.calls) == [[1, 2, 3], [2], [4, 5, 6], [5], [7]]
    assert {o.key: o.asks for o in out} == {1: 1, 2: 2, 3: 1, 4: 1, 5: 2, 6: 1, 7: 1}
    assert out[1].value == {"director": "D2", "country": "Italy", "language": "Italian"}
    assert out[1].prompt_hash == out[0].prompt_hash == prompt_hash(attributes_messages(items[:3]))
    assert out[1].raw == _attrs([2])
    assert client.forgotten == []  # partial answers are used, so they stay cached
    assert all(c[1] == ATTRIBUTES_VERSION for c in client.calls)


def test_attributes_failures_are_bounded_and_per_item() -> None:
    items = [ItemText(i, f"Film {i}", None, "") for i in (10, 11, 12)]

    def script(messages: list[dict[str, str]], n: int) -> str | ChatResult:
        ids = _asked_ids(messages)
        if len(messages) > 2:  # a correction after an answer with nothing valid
            return _attrs([10, 11])  # 12 never answered
        if ids == [10, 11, 12]:
            return "I do not know these films."
        return ChatResult(None, error="HTTP 429 after 6 attempts")

    client = FakeClient(script)
    out = augment_attributes(client, items, items_per_request=5, max_reasks=2, max_workers=1, tags=TAGS)
    assert [(o.key, o.ok, o.asks) for o in out] == [(10, True, 2), (11, True, 2), (12, False, 3)]
    assert out[2].reason == "HTTP 429 after 6 attempts"  # third ask: [12] alone, transport failure
    assert len(client.forgotten) == 1  # only the answer with nothing valid
    assert client.calls[1][0][3]["content"] == ("Your answer was invalid: answer is not JSON: no '{' found. "
                                                "Answer again with JSON only in the required format.")
    assert _asked_ids(client.calls[2][0]) == [12]

    stubborn = FakeClient(lambda m, n: _attrs([10, 11]))
    out = augment_attributes(stubborn, items, items_per_request=5, max_reasks=1, max_workers=1, tags=TAGS)
    assert [(o.key, o.ok, o.asks) for o in out] == [(10, True, 1), (11, True, 1), (12, False, 2)]
    assert out[2].reason == "invalid after 2 answers: item 12 is missing from the answer"
    assert out[2].raw == _attrs([10, 11])


def test_frames_have_exact_columns_and_dtypes() -> None:
    ok_edge = ItemOutcome(1, True, {"pos_item_id": 5, "neg_item_id": 6, "pos_rank": 0, "neg_rank": 3}, "{}", None, 1,
                          "h1", history_cut=2)
    bad = ItemOutcome(2, False, None, None, "no candidates", 0, None)
    ok_profile = ItemOutcome(3, True, PROFILE, "raw", None, 2, "h3")
    ok_attr = ItemOutcome(4, True, {"director": "D", "country": "C", "language": "L"}, "raw", None, 1, "h4")
    expected = {
        "edges": (edges_frame, [ok_edge, bad], {"user_id": "int64", "pos_item_id": "int64", "neg_item_id": "int64",
                                                "model": "string", "prompt_hash": "string", "pos_rank": "int64",
                                                "neg_rank": "int64", "history_cut": "int64"}),
        "profiles": (profiles_frame, [bad, ok_profile], {
            "user_id": "int64", "age": "int64", "gender": "string", "liked_genres": "list<item: string>",
            "disliked_genres": "list<item: string>", "liked_directors": "list<item: string>", "country": "string",
            "language": "string", "raw_text": "string", "model": "string", "prompt_hash": "string",
            "history_cut": "int64"}),
        "attributes": (attributes_frame, [ok_attr, bad], {
            "item_id": "int64", "director": "string", "country": "string", "language": "string",
            "raw_text": "string", "model": "string", "prompt_hash": "string"}),
    }
    for name, (make, outcomes, schema) in expected.items():
        for rows in (outcomes, []):  # the schema holds for empty batches too
            df = make(rows, "m-1")
            assert list(df.columns) == list(schema), name
            assert len(df) == (1 if rows else 0)
            arrow = pa.Table.from_pandas(df, preserve_index=False).schema
            assert {f.name: str(f.type).replace("large_string", "string") for f in arrow} == schema, name
    profile = profiles_frame([ok_profile], "m-1").iloc[0]
    assert list(profile["liked_genres"]) == ["Drama"] and list(profile["liked_directors"]) == []
    assert (profile["user_id"], profile["age"], profile["model"]) == (3, 30, "m-1")
    edges = edges_frame([ok_edge], "m-1")
    assert edges.to_dict("records") == [{"user_id": 1, "pos_item_id": 5, "neg_item_id": 6, "model": "m-1",
                                         "prompt_hash": "h1", "pos_rank": 0, "neg_rank": 3, "history_cut": 2}]
    failures = failures_frame([ok_edge, bad], "edges")
    assert list(failures.columns) == ["stage", "key", "reason", "raw", "asks", "history_cut"]
    assert failures["key"].dtype == "int64" and failures["asks"].dtype == "int64"
    assert failures.iloc[0]["reason"] == "no candidates" and pd.isna(failures.iloc[0]["raw"])
    assert len(failures_frame([], "edges")) == 0


def test_client_exception_propagates_and_cancels_pending_work() -> None:
    class Refused(RuntimeError):
        pass

    def script(messages: list[dict[str, str]], n: int) -> str:
        if _uid_of(messages) == 2:
            raise Refused("invalid API key")
        return json.dumps(PROFILE)

    client = FakeClient(script)
    with pytest.raises(Refused):
        augment_profiles(client, [_user(u) for u in range(1, 30)], max_reasks=1, max_workers=1, tags=TAGS)
    assert len(client.calls) == 2  # users after the failing one were never asked


# --- the prompt token budget -----------------------------------------------------------------------------------
def _long_user(uid: int, n_history: int) -> UserContext:
    history = [ItemText(i, f"A fairly long movie title number {i}", 1990, "Drama|Comedy") for i in range(n_history)]
    candidates = [ItemText(5000 + i, f"Candidate {i}", 2000, "Comedy") for i in range(5)]
    return UserContext(uid, history, candidates, frozenset(range(n_history)),
                       keep=tuple(range(n_history - 1, -1, -1)))


def test_history_is_cut_to_the_budget_and_the_cut_recorded() -> None:
    """A 200-item history does not fit 800 tokens: the most recent items are kept until the prompt fits, the number
    cut is in the outcome and the edges row; a 40-token budget fits no prompt at all: nothing is sent."""
    from recsys.llm.tokens import count_message_tokens

    client = FakeClient(lambda m, n: '{"liked": 0, "disliked": 1}')
    (out,) = augment_edges(client, [_long_user(1, 200)], max_reasks=1, max_workers=1, tags=TAGS,
                           max_prompt_tokens=800)
    (sent, _, _), = client.calls
    assert out.ok and 0 < out.history_cut < 200
    assert count_message_tokens(sent) <= 800
    shown = re.findall(r"number (\d+)", sent[1]["content"])
    assert shown == [str(i) for i in range(out.history_cut, 200)]  # the latest rows, in their order
    assert edges_frame([out], "m")["history_cut"].tolist() == [out.history_cut]

    client = FakeClient(lambda m, n: json.dumps(PROFILE))
    (edge,) = augment_edges(client, [_long_user(2, 3)], max_reasks=1, max_workers=1, tags=TAGS, max_prompt_tokens=40)
    (profile,) = augment_profiles(client, [_long_user(3, 3)], max_reasks=1, max_workers=1, tags=TAGS,
                                  max_prompt_tokens=40)
    assert client.calls == []
    for failed in (edge, profile):
        assert not failed.ok and re.fullmatch(r"prompt too long: \d+ tokens with one history item, more than "
                                              r"max_prompt_tokens=40; not sent", failed.reason)
        assert failed.history_cut == 2
    assert failures_frame([edge], "edges")["history_cut"].tolist() == [2]


def test_attribute_requests_close_early_to_fit_the_budget() -> None:
    from recsys.augment.attributes import request_groups
    from recsys.llm.tokens import count_message_tokens

    items = [ItemText(i, f"Title {i} " + "word " * (40 if i == 3 else 2), 1990, "Drama") for i in range(8)]
    budget = count_message_tokens(attributes_messages(items[:3])) + 5
    groups, alone = request_groups(items, items_per_request=5, max_prompt_tokens=budget)
    assert all(count_message_tokens(attributes_messages([items[i] for i in g])) <= budget for g in groups)
    assert groups[0] == [0, 1, 2] and sorted([i for g in groups for i in g] + [i for i, _ in alone]) == list(range(8))
    assert [i for g in groups for i in g] == sorted(i for g in groups for i in g)  # input order kept
    assert request_groups(items, 5, None) == ([[0, 1, 2, 3, 4], [5, 6, 7]], [])
    tiny = count_message_tokens(attributes_messages(items[:1])) + 1
    client = FakeClient(lambda m, n: "{}")
    out = augment_attributes(client, items[3:4], items_per_request=5, max_reasks=0, max_workers=1, tags=TAGS,
                             max_prompt_tokens=tiny)
    assert client.calls == [] and out[0].reason.startswith("prompt too long") and "this item alone" in out[0].reason
