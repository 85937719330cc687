"""Parse and validate LLM answers. Every validator returns a Verdict: the parsed value, or a precise reason.

The official scripts split on '::', cast to int and trust the result (reference notes §A.3.2): nothing checked
that an index came from the candidate list, that liked != disliked, or that the item was not already in the
history, and the released data shows placeholder words and 'Unknown' values (§A.2). Here any answer that does not
meet the template's rules is rejected with a reason that is logged, sent back to the model in a re-ask, and kept
in the failures table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsys.augment.prompts import UserContext

MAX_ANSWER_CHARS = 100_000
MAX_VALUE_CHARS = 100
MAX_LIST_ENTRIES = 10
AGE_RANGE = (5, 100)
GENDERS = ("male", "female")
PROFILE_LISTS = ("liked_genres", "disliked_genres", "liked_directors")
ATTRIBUTE_FIELDS = ("director", "country", "language")
# Template words echoed back instead of a value are never an answer (the released attribute data shows literal
# "director / country / language" rows, reference notes §A.2).
TEMPLATE_ECHOES = frozenset({"...", "…", "<integer>", "<item id>", "director", "country", "language", "genre"})
# Non-answers: the profile prompt forbids 'unknown' (as the official one did), so a profile with one is asked again.
# For item attributes 'unknown' is an honest answer about an obscure film and is kept.
NON_ANSWERS = frozenset({"unknown", "n/a", "na", "none", "null", "nil", "?", "-", "tbd", "not available",
                         "not applicable"})

_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.DOTALL)
_TRAILING_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


@dataclass(frozen=True)
class Verdict:
    """value when the answer is valid, else reason."""

    value: Any = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_balanced_object(text: str) -> str | None:
    """The first balanced {...} in `text`, skipping braces inside JSON strings; None if there is none."""
    start = text.find("{")
    if start < 0:
        return None
    depth, in_string, escaped = 0, False, False
    for pos in range(start, len(text)):
        ch = text[pos]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : pos + 1]
    return None


def extract_json(text: str | None) -> Verdict:
    """The JSON object in an answer: ```json fences and prose around it are ignored; the first balanced {...}
    is parsed. Value: a dict."""
    if not isinstance(text, str) or not text.strip():
        return Verdict(reason="answer is not JSON: the answer is empty")
    if len(text) > MAX_ANSWER_CHARS:
        return Verdict(reason=f"answer is not JSON: the answer is {len(text)} characters long")
    fenced = [m.group(1) for m in _FENCE.finditer(text) if "{" in m.group(1)]
    body = fenced[0] if fenced else text
    candidate = _first_balanced_object(body)
    if candidate is None:
        what = "no '{' found" if "{" not in body else "unbalanced braces (truncated answer?)"
        return Verdict(reason=f"answer is not JSON: {what}")
    try:
        obj = json.loads(candidate, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return Verdict(reason=f"answer is not JSON: {exc}")
    return Verdict(value=obj)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text_value(name: str, value: Any, *, title: str | None = None, allow_unknown: bool = False) -> Verdict:
    """A non-empty string of at most 100 characters that is not a template echo, not a non-answer (unless
    `allow_unknown`) and not the item's own title."""
    if not isinstance(value, str):
        return Verdict(reason=f"{name} {_show(value)} is not a string")
    text = value.strip()
    if not text:
        return Verdict(reason=f"{name} is empty")
    if len(text) > MAX_VALUE_CHARS:
        return Verdict(reason=f"{name} is longer than {MAX_VALUE_CHARS} characters")
    if text.lower() in TEMPLATE_ECHOES or (not allow_unknown and text.lower() in NON_ANSWERS):
        return Verdict(reason=f"{name} {_show(text)} is a placeholder, not an answer")
    if title and _TRAILING_YEAR.sub("", text).lower() == _TRAILING_YEAR.sub("", title).strip().lower():
        return Verdict(reason=f"{name} {_show(text)} repeats the movie's title")
    return Verdict(value=text)


def validate_edges(text: str | None, ctx: UserContext) -> Verdict:
    """{"liked": i, "disliked": j}: ints in [0, k), different, and neither item in the user's training history.
    Value: {"pos_item_id", "neg_item_id"} (raw item ids)."""
    parsed = extract_json(text)
    if not parsed.ok:
        return parsed
    obj, k = parsed.value, len(ctx.candidates)
    for name in ("liked", "disliked"):
        if name not in obj:
            return Verdict(reason=f"missing field {name!r}")
        if not _is_int(obj[name]):
            return Verdict(reason=f"{name} index {_show(obj[name])} is not an integer")
        if not 0 <= obj[name] < k:
            return Verdict(reason=f"{name} index {obj[name]} is outside the candidate list 0..{k - 1}")
    liked, disliked = obj["liked"], obj["disliked"]
    if liked == disliked:
        return Verdict(reason=f"liked and disliked are the same index {liked}")
    forbidden = ctx.forbidden_item_ids()
    for name, index in (("liked", liked), ("disliked", disliked)):
        item_id = ctx.candidates[index].item_id
        if item_id in forbidden:
            return Verdict(reason=f"{name} item {item_id} is in the user's training history")
    return Verdict(value={"pos_item_id": int(ctx.candidates[liked].item_id),
                          "neg_item_id": int(ctx.candidates[disliked].item_id)})


def _text_list(name: str, value: Any) -> Verdict:
    if not isinstance(value, list):
        return Verdict(reason=f"{name} {_show(value)} is not a list of strings")
    if len(value) > MAX_LIST_ENTRIES:
        return Verdict(reason=f"{name} has {len(value)} entries (at most {MAX_LIST_ENTRIES})")
    out = []
    for i, entry in enumerate(value):
        checked = _text_value(f"{name} entry {i}", entry)
        if not checked.ok:
            return checked
        out.append(checked.value)
    return Verdict(value=out)


def validate_profile(text: str | None) -> Verdict:
    """The profile JSON: age int in [5, 100], gender male/female, three lists of <= 10 strings, country and
    language strings; every string non-empty, <= 100 characters, not a placeholder or 'unknown'. Extra keys are
    ignored.
    Value: {"age", "gender", "liked_genres", "disliked_genres", "liked_directors", "country", "language"}."""
    parsed = extract_json(text)
    if not parsed.ok:
        return parsed
    obj = parsed.value
    for name in ("age", "gender", *PROFILE_LISTS, "country", "language"):
        if name not in obj:
            return Verdict(reason=f"missing field {name!r}")
    age = obj["age"]
    if not _is_int(age):
        return Verdict(reason=f"age {_show(age)} is not an integer")
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        return Verdict(reason=f"age {age} is outside {AGE_RANGE[0]}..{AGE_RANGE[1]}")
    gender = obj["gender"].strip().lower() if isinstance(obj["gender"], str) else None
    if gender not in GENDERS:
        return Verdict(reason=f"gender {_show(obj['gender'])} is not 'male' or 'female'")
    value: dict[str, Any] = {"age": age, "gender": gender}
    for name in PROFILE_LISTS:
        checked = _text_list(name, obj[name])
        if not checked.ok:
            return checked
        value[name] = checked.value
    for name in ("country", "language"):
        checked = _text_value(name, obj[name])
        if not checked.ok:
            return checked
        value[name] = checked.value
    return Verdict(value=value)


@dataclass(frozen=True)
class AttributesVerdict:
    """Per asked item id: `valid` holds its fields, `invalid` the reason it has none. Every asked id is in
    exactly one of the two."""

    valid: dict[int, dict[str, str]]
    invalid: dict[int, str]


def validate_attributes(text: str | None, asked: Mapping[int, str]) -> AttributesVerdict:
    """{"items": [{"id", "director", "country", "language"}, ...]} for the asked ids (id -> title).

    Entries are judged one by one: a valid entry is kept even when others are invalid. An asked id that is
    missing, repeated or has a bad field (empty, > 100 characters, a template word, the movie's own title) is
    invalid; 'unknown' is accepted; entries for ids that were not asked are ignored.
    """
    parsed = extract_json(text)
    if parsed.ok:
        entries = parsed.value.get("items")
        if "items" not in parsed.value:
            parsed = Verdict(reason="missing field 'items'")
        elif not isinstance(entries, list):
            parsed = Verdict(reason=f"items {_show(entries)} is not a list")
    if not parsed.ok:
        return AttributesVerdict({}, {item_id: parsed.reason for item_id in asked})

    by_id: dict[int, list[Any]] = {}
    for entry in entries:
        if isinstance(entry, dict) and _is_int(entry.get("id")) and entry["id"] in asked:
            by_id.setdefault(entry["id"], []).append(entry)
    valid: dict[int, dict[str, str]] = {}
    invalid: dict[int, str] = {}
    for item_id, title in asked.items():
        found = by_id.get(item_id, [])
        if not found:
            invalid[item_id] = f"item {item_id} is missing from the answer"
            continue
        if len(found) > 1:
            invalid[item_id] = f"item {item_id} appears {len(found)} times in the answer"
            continue
        fields: dict[str, str] = {}
        for name in ATTRIBUTE_FIELDS:
            if name not in found[0]:
                invalid[item_id] = f"item {item_id}: missing field {name!r}"
                break
            checked = _text_value(name, found[0][name], title=title, allow_unknown=True)
            if not checked.ok:
                invalid[item_id] = f"item {item_id}: {checked.reason}"
                break
            fields[name] = checked.value
        else:
            valid[item_id] = fields
    return AttributesVerdict(valid, invalid)
