"""Answer parsing and validation: every rule of the templates, with precise reasons."""

from __future__ import annotations

import json
import random
import string

import pytest

from recsys.augment.parse import InvalidAnswer, extract_json, validate_attributes, validate_edges, validate_profile
from recsys.augment.prompts import ItemText, UserContext

CTX = UserContext(
    user_id=1,
    history=[ItemText(100, "Heat", 1995, "Action")],
    candidates=[ItemText(200 + i, f"C{i}", 2000, "Drama") for i in range(10)],
    train_item_ids=frozenset({100, 101}),
)
PROFILE = {"age": 34, "gender": "Female", "liked_genres": ["Drama", "Comedy"], "disliked_genres": [],
           "liked_directors": ["Ang Lee"], "country": "USA", "language": "English"}


def rejection(validate: object, *args: object) -> str | None:
    """The reason `validate(*args)` rejects its answer with, None when it accepts it."""
    try:
        validate(*args)  # type: ignore[operator]
    except InvalidAnswer as exc:
        return str(exc)
    return None


def test_extract_plain_fenced_and_prose() -> None:
    assert extract_json('{"liked": 1, "disliked": 2}') == {"liked": 1, "disliked": 2}
    fenced = 'Sure! Here it is:\n```json\n{"liked": 3, "disliked": 4}\n```\nHope that helps {really}.'
    assert extract_json(fenced) == {"liked": 3, "disliked": 4}
    assert extract_json("```\n{\"a\": 1}\n```") == {"a": 1}
    prose = 'I think the answer is {"liked": 5, "disliked": 6} because of the genres.'
    assert extract_json(prose) == {"liked": 5, "disliked": 6}
    # braces inside strings do not end the object; the first object wins
    tricky = 'x {"t": "a } b { c", "n": {"m": [1, 2]}} {"other": 1}'
    assert extract_json(tricky) == {"t": "a } b { c", "n": {"m": [1, 2]}}


@pytest.mark.parametrize("text, reason", [
    ("", "answer is not JSON: the answer is empty"),
    (None, "answer is not JSON: the answer is empty"),
    ("liked: 3, disliked: 4", "answer is not JSON: no '{' found"),
    ('{"liked": 3, "disliked": ', "answer is not JSON: unbalanced braces"),
    ("{'liked': 3, 'disliked': 4}", "answer is not JSON: Expecting property name"),
    ('{"liked": NaN, "disliked": 1}', "answer is not JSON: NaN is not a JSON number"),
    ("x" * 100_001, "answer is not JSON: the answer is 100001 characters long"),
])
def test_extract_rejects(text: str | None, reason: str) -> None:
    with pytest.raises(InvalidAnswer) as info:
        extract_json(text)
    assert str(info.value).startswith(reason)


def test_edges_valid_maps_indices_to_item_ids() -> None:
    assert validate_edges('```json\n{"liked": 0, "disliked": 9}\n```', CTX) == {
        "pos_item_id": 200, "neg_item_id": 209, "pos_rank": 1, "neg_rank": 10}


def test_edges_map_shown_positions_back_to_the_base_order() -> None:
    """Candidates listed in a shuffled order: the answer's index names the item shown there, and its rank is its
    position in the base model's order."""
    order = (3, 0, 2, 1)
    base = [ItemText(300 + i, f"B{i}", 2000, "Drama") for i in range(4)]
    ctx = UserContext(1, CTX.history, [base[i] for i in order], frozenset({100}), order=order)
    assert validate_edges('{"liked": 0, "disliked": 3}', ctx) == {"pos_item_id": 303, "neg_item_id": 301,
                                                                  "pos_rank": 4, "neg_rank": 2}


EDGE = '{"liked": 2, "disliked": 7}'
WRAPPINGS = {
    "fence, json tag": f"```json\n{EDGE}\n```",
    "fence, no tag": f"```\n{EDGE}\n```",
    "fence, other tag": f"```JSON5 \n{EDGE}\n```",
    "fence, javascript tag": f"Here you go:\n```javascript\n{EDGE}\n```\nEnjoy!",
    "several fences, first is not the answer": f'```json\n{{"example": true}}\n```\nso:\n```json\n{EDGE}\n```',
    "several fences, first has a bad index": f'```json\n{{"liked": 99, "disliked": 1}}\n```\n```json\n{EDGE}\n```',
    "prose before and after": f"Based on the history, {EDGE} is my pick {{because}} of the genres.",
    "object on its own line": f"Answer:\n{EDGE}\n\nReasoning: the user likes dramas.",
    "braces in prose first": f"The format {{liked, disliked}} asks for:\n{EDGE}",
}


@pytest.mark.parametrize("text", WRAPPINGS.values(), ids=WRAPPINGS.keys())
def test_wrapped_answers_are_accepted(text: str) -> None:
    """Any wrapping around the answer: the first object that validates against the stage's schema is used."""
    assert validate_edges(text, CTX)["pos_item_id"] == 202
    profile = text.replace(EDGE, json.dumps(PROFILE))
    assert validate_profile(profile)["age"] == 34
    attrs = text.replace(EDGE, json.dumps({"items": [{"id": 5, "director": "A", "country": "B", "language": "C"}]}))
    assert validate_attributes(attrs, {5: "Heat"})[0] == {5: {"director": "A", "country": "B", "language": "C"}}


def test_no_valid_object_gives_the_first_objects_reason() -> None:
    text = '```json\n{"liked": 99, "disliked": 1}\n```\nor\n```json\n{"liked": 3, "disliked": 3}\n```'
    assert rejection(validate_edges, text, CTX) == "liked index 99 is outside the candidate list 0..9"


@pytest.mark.parametrize("answer, reason", [
    ({"liked": 12, "disliked": 1}, "liked index 12 is outside the candidate list 0..9"),
    ({"liked": 1, "disliked": -1}, "disliked index -1 is outside the candidate list 0..9"),
    ({"liked": 3, "disliked": 3}, "liked and disliked are the same index 3"),
    ({"disliked": 3}, "missing field 'liked'"),
    ({"liked": "3", "disliked": 4}, "liked index '3' is not an integer"),
    ({"liked": True, "disliked": 4}, "liked index true is not an integer"),
    ({"liked": 2.0, "disliked": 4}, "liked index 2.0 is not an integer"),
    ({"liked": "Toy Story", "disliked": 4}, "liked index 'Toy Story' is not an integer"),
    ([1, 2], "answer is not JSON: no '{' found"),
])
def test_edges_rejects(answer: object, reason: str) -> None:
    assert rejection(validate_edges, json.dumps(answer), CTX) == reason


def test_edges_rejects_items_in_training_history() -> None:
    ctx = UserContext(1, CTX.history, [ItemText(100, "Heat", 1995, "Action"), ItemText(7, "X", None, ""),
                                       ItemText(101, "Old", None, "")], frozenset({100, 101}))
    assert rejection(validate_edges, '{"liked": 0, "disliked": 1}', ctx) == (
        "liked item 100 is in the user's training history")
    assert rejection(validate_edges, '{"liked": 1, "disliked": 2}', ctx) == (
        "disliked item 101 is in the user's training history")
    assert rejection(validate_edges, '{"liked": 1, "disliked": 0}', ctx).endswith("is in the user's training history")


def test_profile_valid_is_normalised() -> None:
    assert validate_profile("Profile:\n" + json.dumps({**PROFILE, "extra": 1})) == {**PROFILE, "gender": "female"}


@pytest.mark.parametrize("change, reason", [
    ({"age": "old"}, "age 'old' is not an integer"),
    ({"age": 150}, "age 150 is outside 5..100"),
    ({"age": None}, "age null is not an integer"),
    ({"gender": "other"}, "gender 'other' is not 'male' or 'female'"),
    ({"liked_genres": "Drama"}, "liked_genres 'Drama' is not a list of strings"),
    ({"liked_genres": [str(i) for i in range(11)]}, "liked_genres has 11 entries (at most 10)"),
    ({"disliked_genres": ["Horror", 3]}, "disliked_genres entry 1 3 is not a string"),
    ({"liked_directors": ["x" * 101]}, "liked_directors entry 0 is longer than 100 characters"),
    ({"liked_directors": [" "]}, "liked_directors entry 0 is empty"),
    ({"country": ""}, "country is empty"),
    ({"country": "Unknown"}, "country 'Unknown' is a placeholder, not an answer"),
    ({"liked_directors": ["..."]}, "liked_directors entry 0 '...' is a placeholder, not an answer"),
    ({"language": 5}, "language 5 is not a string"),
])
def test_profile_rejects(change: dict, reason: str) -> None:
    assert rejection(validate_profile, json.dumps({**PROFILE, **change})) == reason


def test_profile_missing_field() -> None:
    answer = {k: v for k, v in PROFILE.items() if k != "country"}
    assert rejection(validate_profile, json.dumps(answer)) == "missing field 'country'"


def _entry(item_id: object, **fields: str) -> dict:
    return {"id": item_id, "director": "Ridley Scott", "country": "UK", "language": "English", **fields}


def test_attributes_partial_answer_keeps_valid_entries() -> None:
    asked = {1: "Alien (1979)", 2: "Babe (1995)", 3: "Heat (1995)", 4: "Up (2009)", 5: "Jaws (1975)", 6: "Big",
             7: "Obscure", 8: "Other"}
    answer = {"items": [
        _entry(1),
        _entry(2, country=""),
        _entry(3), _entry(3, director="Someone"),
        {"id": 4, "director": "Pete Docter", "language": "English"},
        _entry(5, director="Jaws"),
        _entry(7, country="Unknown", language="unknown"),
        _entry(8, director="director"),
        _entry("6"),
        _entry(99),  # not asked: ignored
        "garbage",
    ]}
    valid, invalid = validate_attributes("```json\n" + json.dumps(answer) + "\n```", asked)
    assert valid == {1: {"director": "Ridley Scott", "country": "UK", "language": "English"},
                             7: {"director": "Ridley Scott", "country": "Unknown", "language": "unknown"}}
    assert invalid == {
        2: "item 2: country is empty",
        3: "item 3 appears 2 times in the answer",
        4: "item 4: missing field 'country'",
        5: "item 5: director 'Jaws' repeats the movie's title",
        6: "item 6 is missing from the answer",
        8: "item 8: director 'director' is a placeholder, not an answer",
    }


@pytest.mark.parametrize("text, reason", [
    ("no json here", "answer is not JSON: no '{' found"),
    ('{"entries": []}', "missing field 'items'"),
    ('{"items": {"id": 1}}', 'items {"id": 1} is not a list'),
])
def test_attributes_whole_answer_rejected(text: str, reason: str) -> None:
    assert rejection(validate_attributes, text, {1: "A", 2: "B"}) == reason


def test_validators_never_raise_on_junk() -> None:
    rng = random.Random(0)
    alphabet = string.printable + "{}[]\"'"
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        for validate, args in ((validate_edges, (text, CTX)), (validate_profile, (text,))):
            assert rejection(validate, *args) != ""  # a value, or a reason
        try:
            valid, invalid = validate_attributes(text, {1: "A"})
            assert set(valid) | set(invalid) == {1}
        except InvalidAnswer as exc:
            assert str(exc)
    deep = "[" * 5000 + "]" * 5000
    assert rejection(validate_profile, "{" + '"a": ' + deep + "}")
