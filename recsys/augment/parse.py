"""Parse and validate LLM answers: each stage's answer is a pydantic model validated with its context (the user's
candidates; the asked item's title), and a rejected answer raises `InvalidAnswer` with a precise reason.

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
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from recsys.augment.prompts import UserContext

MAX_ANSWER_CHARS = 100_000
MAX_VALUE_CHARS = 100
MAX_LIST_ENTRIES = 10
AGE_RANGE = (5, 100)
GENDERS = ("male", "female")
PROFILE_LISTS = ("liked_genres", "disliked_genres", "liked_directors")
# Template words echoed back instead of a value are never an answer (the released attribute data shows literal
# "director / country / language" rows, reference notes §A.2).
TEMPLATE_ECHOES = frozenset({"...", "…", "<integer>", "<item id>", "director", "country", "language", "genre"})
# Non-answers: the profile prompt forbids 'unknown' (as the official one did), so a profile with one is asked again.
# For item attributes 'unknown' is an honest answer about an obscure film and is kept.
NON_ANSWERS = frozenset({"unknown", "n/a", "na", "none", "null", "nil", "?", "-", "tbd", "not available",
                         "not applicable"})

_TRAILING_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


class InvalidAnswer(ValueError):
    """An answer that breaks its template's rules; the message is the reason."""


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def json_objects(text: str | None) -> list[Any]:
    """Every JSON object in an answer, in the order they appear: whatever wraps them (markdown fences with any
    language tag or none, prose before, between or after, an object on its own line) is skipped, and an object
    nested in another is part of the outer one. Raises InvalidAnswer when there is none, with the reason the first
    '{' does not start one (a truncated answer, single quotes, NaN, ...)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidAnswer("answer is not JSON: the answer is empty")
    if len(text) > MAX_ANSWER_CHARS:
        raise InvalidAnswer(f"answer is not JSON: the answer is {len(text)} characters long")
    found: list[Any] = []
    first_error: str | None = None
    start = text.find("{")
    if start < 0:
        raise InvalidAnswer("answer is not JSON: no '{' found")
    while start >= 0:
        try:
            value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            if first_error is None:
                truncated = exc.pos >= len(text.rstrip())
                first_error = "unbalanced braces (truncated answer?)" if truncated else str(exc)
            start = text.find("{", start + 1)
            continue
        except (ValueError, RecursionError) as exc:
            first_error = first_error or str(exc)
            start = text.find("{", start + 1)
            continue
        found.append(value)
        start = text.find("{", end)
    if not found:
        raise InvalidAnswer(f"answer is not JSON: {first_error}")
    return found


def extract_json(text: str | None) -> Any:
    """The first JSON object in an answer (see `json_objects`). Raises InvalidAnswer."""
    return json_objects(text)[0]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(name: str, value: Any, *, title: str | None = None, allow_unknown: bool = False) -> str:
    """A non-empty string of at most 100 characters that is not a template echo, not a non-answer (unless
    `allow_unknown`) and not the item's own title; stripped."""
    if not isinstance(value, str):
        raise ValueError(f"{name} {_show(value)} is not a string")
    text = value.strip()
    if not text:
        raise ValueError(f"{name} is empty")
    if len(text) > MAX_VALUE_CHARS:
        raise ValueError(f"{name} is longer than {MAX_VALUE_CHARS} characters")
    if text.lower() in TEMPLATE_ECHOES or (not allow_unknown and text.lower() in NON_ANSWERS):
        raise ValueError(f"{name} {_show(text)} is a placeholder, not an answer")
    if title and _TRAILING_YEAR.sub("", text).lower() == _TRAILING_YEAR.sub("", title).strip().lower():
        raise ValueError(f"{name} {_show(text)} repeats the movie's title")
    return text


def _text_list(value: Any, info: ValidationInfo) -> list[str]:
    name = info.field_name
    if not isinstance(value, list):
        raise ValueError(f"{name} {_show(value)} is not a list of strings")
    if len(value) > MAX_LIST_ENTRIES:
        raise ValueError(f"{name} has {len(value)} entries (at most {MAX_LIST_ENTRIES})")
    return [_text(f"{name} entry {i}", entry) for i, entry in enumerate(value)]


def _index(value: Any, info: ValidationInfo) -> int:
    """A candidate index in [0, k) for the `candidates` in the validation context."""
    if not _is_int(value):
        raise ValueError(f"{info.field_name} index {_show(value)} is not an integer")
    k = len(info.context["user"].candidates)
    if not 0 <= value < k:
        raise ValueError(f"{info.field_name} index {value} is outside the candidate list 0..{k - 1}")
    return value


def _age(value: Any) -> int:
    if not _is_int(value):
        raise ValueError(f"age {_show(value)} is not an integer")
    if not AGE_RANGE[0] <= value <= AGE_RANGE[1]:
        raise ValueError(f"age {value} is outside {AGE_RANGE[0]}..{AGE_RANGE[1]}")
    return value


def _gender(value: Any) -> str:
    gender = value.strip().lower() if isinstance(value, str) else None
    if gender not in GENDERS:
        raise ValueError(f"gender {_show(value)} is not 'male' or 'female'")
    return gender


Index = Annotated[int, BeforeValidator(_index)]
Text = Annotated[str, BeforeValidator(lambda value, info: _text(info.field_name, value))]
TextList = Annotated[list[str], BeforeValidator(_text_list)]
# An item attribute: 'unknown' is allowed, the item's own title (the context's `title`) is not.
AttributeText = Annotated[str, BeforeValidator(
    lambda value, info: _text(info.field_name, value, title=info.context["title"], allow_unknown=True))]


class EdgesAnswer(BaseModel):
    """{"liked": i, "disliked": j}: indices into the candidate list of the context's `user`, different, and
    neither item in the user's training history."""

    liked: Index
    disliked: Index

    @model_validator(mode="after")
    def _distinct_and_unseen(self, info: ValidationInfo) -> EdgesAnswer:
        if self.liked == self.disliked:
            raise ValueError(f"liked and disliked are the same index {self.liked}")
        user: UserContext = info.context["user"]
        forbidden = user.forbidden_item_ids()
        for name, index in (("liked", self.liked), ("disliked", self.disliked)):
            if user.candidates[index].item_id in forbidden:
                raise ValueError(f"{name} item {user.candidates[index].item_id} is in the user's training history")
        return self


class ProfileAnswer(BaseModel):
    """The profile: age int in [5, 100], gender male/female, three lists of <= 10 strings, country and language
    strings; every string non-empty, <= 100 characters, not a placeholder or 'unknown'. Extra keys are ignored."""

    age: Annotated[int, BeforeValidator(_age)]
    gender: Annotated[str, BeforeValidator(_gender), WithJsonSchema({"type": "string", "enum": list(GENDERS)})]
    liked_genres: TextList
    disliked_genres: TextList
    liked_directors: TextList
    country: Text
    language: Text


class ItemAttributes(BaseModel):
    """One movie's attributes; the context's `title` is the movie's own title, which no field may repeat."""

    director: AttributeText
    country: AttributeText
    language: AttributeText


def _entry_schema() -> dict[str, Any]:
    """The JSON schema of one attributes entry: the asked item's id and its `ItemAttributes`."""
    schema = ItemAttributes.model_json_schema()
    return {**schema, "properties": {"id": {"type": "integer"}, **schema["properties"]},
            "required": ["id", *schema["required"]]}


class AttributesAnswer(BaseModel):
    """{"items": [...]}: the entries are judged one by one against the asked ids (`validate_attributes`); the JSON
    schema says each is {"id", "director", "country", "language"}."""

    items: Annotated[list[Any], WithJsonSchema({"type": "array", "items": _entry_schema()})]

    @field_validator("items", mode="before")
    @classmethod
    def _a_list(cls, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError(f"items {_show(value)} is not a list")
        return value


def _reason(exc: ValidationError) -> str:
    """The first broken rule: a missing field first, else the first field's own message."""
    first = sorted(exc.errors(), key=lambda e: e["type"] != "missing")[0]
    if first["type"] == "missing":
        return f"missing field {first['loc'][-1]!r}"
    error = first.get("ctx", {}).get("error")
    return str(error) if error is not None else f"{'.'.join(map(str, first['loc']))}: {first['msg']}"


def _validated(model: type[BaseModel], obj: Any, **context: Any) -> Any:
    """`model` validated from `obj` with `context`; raises InvalidAnswer with the reason."""
    try:
        return model.model_validate(obj, context=context)
    except ValidationError as exc:
        raise InvalidAnswer(_reason(exc)) from None


def _first_valid(model: type[BaseModel], text: str | None, **context: Any) -> Any:
    """The first JSON object in `text` that `model` validates (wrappings and other objects around it are no
    reason to ask again); raises InvalidAnswer with the first object's reason when none does."""
    first: InvalidAnswer | None = None
    for obj in json_objects(text):
        try:
            return _validated(model, obj, **context)
        except InvalidAnswer as exc:
            first = first or exc
    assert first is not None  # json_objects returns at least one object
    raise first


ANSWER_MODELS: dict[str, type[BaseModel]] = {"edges": EdgesAnswer, "profiles": ProfileAnswer,
                                             "attributes": AttributesAnswer}


def answer_schema(stage: str) -> dict[str, Any]:
    """The JSON schema of `stage`'s answer, from the pydantic model that validates it (`ANSWER_MODELS`): what a
    structured-output request sends as `response_format` (recsys/llm/structured.py makes it strict)."""
    return ANSWER_MODELS[stage].model_json_schema()


def validate_edges(text: str | None, ctx: UserContext) -> dict[str, int]:
    """{"pos_item_id", "neg_item_id"} (raw item ids) and {"pos_rank", "neg_rank"} (their ranks in the base model's
    candidate order, 1 = its best, as in candidates.parquet) of a valid edges answer for `ctx`; raises
    InvalidAnswer."""
    answer: EdgesAnswer = _first_valid(EdgesAnswer, text, user=ctx)
    return {"pos_item_id": int(ctx.candidates[answer.liked].item_id),
            "neg_item_id": int(ctx.candidates[answer.disliked].item_id),
            "pos_rank": ctx.base_rank(answer.liked) + 1, "neg_rank": ctx.base_rank(answer.disliked) + 1}


def validate_profile(text: str | None) -> dict[str, Any]:
    """The fields of a valid profile answer (gender lower-cased, strings stripped); raises InvalidAnswer."""
    return _first_valid(ProfileAnswer, text).model_dump()


def validate_attributes(text: str | None, asked: Mapping[int, str]
                        ) -> tuple[dict[int, dict[str, str]], dict[int, str]]:
    """(valid fields, reason) per asked id (id -> title), every asked id in exactly one of the two.

    Entries are judged one by one: a valid entry is kept even when others are invalid. An asked id that is
    missing, repeated or has a bad field (empty, > 100 characters, a template word, the movie's own title) is
    invalid; 'unknown' is accepted; entries for ids that were not asked are ignored. An answer that is not
    {"items": [...]} at all raises InvalidAnswer.
    """
    entries: dict[int, list[Any]] = {item_id: [] for item_id in asked}
    for entry in _first_valid(AttributesAnswer, text).items:
        if isinstance(entry, dict) and _is_int(entry.get("id")) and entry["id"] in asked:
            entries[entry["id"]].append(entry)
    valid: dict[int, dict[str, str]] = {}
    invalid: dict[int, str] = {}
    for item_id, found in entries.items():
        if len(found) != 1:
            invalid[item_id] = (f"item {item_id} appears {len(found)} times in the answer" if found
                                else f"item {item_id} is missing from the answer")
            continue
        try:
            valid[item_id] = _validated(ItemAttributes, found[0], title=asked[item_id]).model_dump()
        except InvalidAnswer as exc:
            invalid[item_id] = f"item {item_id}: {exc}"
    return valid, invalid
