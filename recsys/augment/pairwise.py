"""Llama4Rec's data augmentation for direct recommendation (Luo et al., arXiv 2401.13870 [L4R] §4.2, prompt P1):
for pairs of items a user has not trained on, the LLM says which one the user prefers; each answer is a BPR
triplet (user, preferred, other) added to the backbone's training data (D' = D + augmented, Eq. 3).

[L4R] asks one pair per prompt; here one prompt asks all of a user's pairs (the history is sent once, not once per
pair). The prompt shows the user's training history only. The answer is {"preferred": ["A" or "B", ...]} with one
entry per pair in pair order; anything else is invalid and re-asked (`runner.ask_until_valid`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pydantic import BaseModel, ValidationInfo, field_validator

from recsys.augment.parse import _show, _validated, extract_json
from recsys.augment.prompts import ItemText, Messages, UserContext, item_line
from recsys.augment.runner import ChatClient, ItemOutcome, ask_each

PAIRWISE_VERSION = "pairwise-v1"

HISTORY_HEADER = "User history:"
PAIRS_HEADER = "Movie pairs:"
CHOICES = ("A", "B")

PAIRWISE_SYSTEM = (
    "You are a movie recommendation system. Based on the user's viewing history (title, year, genres), say for "
    "each pair of movies which one the user would prefer."
)
PAIRWISE_INSTRUCTION = (
    'Answer with JSON only, no reasoning: {{"preferred": ["A" or "B", ...]}} with one entry per pair, in pair '
    "order ({n} entries)."
)


@dataclass(frozen=True)
class PairContext:
    """One user's pairwise prompt data: the training history (`user.history`, most recent last) and the pairs of
    items the user has not trained on."""

    user: UserContext
    pairs: tuple[tuple[ItemText, ItemText], ...]

    def __post_init__(self) -> None:
        trained = self.user.forbidden_item_ids()
        for a, b in self.pairs:
            if a.item_id == b.item_id:
                raise ValueError(f"user {self.user.user_id}: a pair holds item {a.item_id} twice")
            if a.item_id in trained or b.item_id in trained:
                raise ValueError(f"user {self.user.user_id}: pair ({a.item_id}, {b.item_id}) holds a training item")


def pairwise_messages(ctx: PairContext) -> Messages:
    """The pairwise preference prompt: the history, then each pair as two lines `[i] A: ...` and `[i] B: ...`."""
    if not ctx.pairs:
        raise ValueError(f"user {ctx.user.user_id} has no pairs")
    lines = [HISTORY_HEADER, *(f"- {item_line(item)}" for item in ctx.user.history), PAIRS_HEADER]
    for i, (a, b) in enumerate(ctx.pairs):
        lines += [f"[{i}] A: {item_line(a)}", f"[{i}] B: {item_line(b)}"]
    lines.append(PAIRWISE_INSTRUCTION.format(n=len(ctx.pairs)))
    return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


class PairwiseAnswer(BaseModel):
    """{"preferred": [...]}: exactly one "A" or "B" (any case, spaces ignored) per pair of the context's `n`."""

    preferred: list[str]

    @field_validator("preferred", mode="before")
    @classmethod
    def _one_choice_per_pair(cls, value: Any, info: ValidationInfo) -> list[str]:
        n = info.context["n"]
        if not isinstance(value, list):
            raise ValueError(f"preferred {_show(value)} is not a list")
        if len(value) != n:
            raise ValueError(f"preferred has {len(value)} entries for {n} pairs")
        choices = []
        for i, entry in enumerate(value):
            choice = entry.strip().upper() if isinstance(entry, str) else None
            if choice not in CHOICES:
                raise ValueError(f"preferred entry {i} {_show(entry)} is not 'A' or 'B'")
            choices.append(choice)
        return choices


def validate_pairwise(text: str | None, ctx: PairContext) -> dict[str, list[tuple[int, int]]]:
    """{"triplets": [(preferred item id, other item id), ...]} in pair order; raises InvalidAnswer."""
    answer: PairwiseAnswer = _validated(PairwiseAnswer, extract_json(text), n=len(ctx.pairs))
    return {"triplets": [(a.item_id, b.item_id) if choice == "A" else (b.item_id, a.item_id)
                         for choice, (a, b) in zip(answer.preferred, ctx.pairs, strict=True)]}


def augment_pairwise(
    client: ChatClient,
    contexts: list[PairContext],
    *,
    max_reasks: int,
    max_workers: int,
    tags: dict[str, str],
) -> list[ItemOutcome]:
    """One outcome per user, in input order; value {"triplets"} (see `validate_pairwise`). A user without pairs
    or without training history fails without a call."""
    return ask_each(client, contexts, key=lambda c: c.user.user_id, skip=_unaskable, messages=pairwise_messages,
                    validate=validate_pairwise, template_version=PAIRWISE_VERSION, max_reasks=max_reasks,
                    max_workers=max_workers, tags=tags)


def _unaskable(ctx: PairContext) -> str | None:
    if not ctx.pairs:
        return "no pairs"
    return None if ctx.user.history else "no training history"

def pairwise_frame(outcomes: Sequence[ItemOutcome], model: str) -> pd.DataFrame:
    """augmented triplets: user_id, pos_item_id, neg_item_id (int64), model, prompt_hash — one row per answered
    pair (the columns of LLMRec's augmented edges, so `recsys.train.augmented.AugmentedEdges` reads both)."""
    rows = [(o.key, pos, neg, model, o.prompt_hash) for o in outcomes if o.ok and o.value is not None
            for pos, neg in o.value["triplets"]]
    columns = {"user_id": "int64", "pos_item_id": "int64", "neg_item_id": "int64", "model": "str",
               "prompt_hash": "str"}
    return pd.DataFrame({c: pd.Series([r[j] for r in rows], dtype=t) for j, (c, t) in enumerate(columns.items())},
                        columns=list(columns))
