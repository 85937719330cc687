"""Llama4Rec's listwise ranking prompt (Luo et al., arXiv 2401.13870 [L4R] §4.3, Fig. 2): the LLM re-ranks the
backbone's top-k' list, with prompt augmentation (the most similar user's history and the backbone's prediction)
or without it; its answer is validated and completed here.

The candidates are shown in a neutral order (by item id) and numbered; the backbone's order reaches the prompt
only through the "Conventional model prediction" line of prompt augmentation, so the ablation without it really
hides the backbone's ranking. Only training interactions reach a history (the callers build the `UserContext`s
from training rows alone). The answer is {"ranking": [candidate indices, best first]}: an index outside the
candidates, a repeated index, or no index at all makes the answer invalid (it is re-asked, `runner.ask_until_valid`);
an answer that leaves candidates out is completed with them in the backbone's order, and how many were added is
kept (`completed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pydantic import BaseModel, ValidationInfo, field_validator

from recsys.augment.parse import _is_int, _show, _validated, extract_json
from recsys.augment.prompts import ItemText, Messages, UserContext, item_line
from recsys.augment.runner import ChatClient, ItemOutcome, ask_each

RANKING_VERSION = "ranking-v1"

HISTORY_HEADER = "User history:"
SIMILAR_HEADER = "Similar user history:"
CANDIDATES_HEADER = "Candidate movies:"
PREDICTION_PREFIX = "Conventional model prediction:"

# [L4R] Fig. 2: "Rank the candidate movies based on user historical interactions and make the top k
# recommendations."
RANKING_SYSTEM = (
    "You are a movie recommendation system. Rank the candidate movies based on the user's viewing history "
    "(title, year, genres) and make the top {k} recommendations."
)
AUGMENTED_HINT = (
    " The viewing history of the most similar user and the ranking predicted by a conventional recommendation "
    "model are given as hints."
)
RANKING_INSTRUCTION = (
    'Answer with JSON only, no reasoning: {{"ranking": [<candidate index>, ...]}} with all {k} candidate indices '
    "(0 to {last}), each once, the movie the user will like most first."
)


@dataclass(frozen=True)
class RankingContext:
    """One user's ranking prompt data.

    user: the user's training history (most recent last) and, as `candidates`, the backbone's top-k' list in the
    backbone's order (best first). similar: the most similar user's training history (prompt augmentation), or
    None for the prompt without augmentation; `augmented` says which prompt is built.
    """

    user: UserContext
    similar: UserContext | None = None
    augmented: bool = False

    def __post_init__(self) -> None:
        if self.augmented and self.similar is None:
            raise ValueError(f"user {self.user.user_id}: an augmented ranking prompt needs the similar user")
        if self.similar is not None and self.similar.user_id == self.user.user_id:
            raise ValueError(f"user {self.user.user_id}: the similar user must be another user")

    def shown(self) -> list[ItemText]:
        """The candidates in the order the prompt numbers them: by item id (neutral)."""
        return sorted(self.user.candidates, key=lambda item: item.item_id)

    def prediction(self) -> list[int]:
        """The backbone's ranking as indices into `shown()`, best first."""
        index = {item.item_id: i for i, item in enumerate(self.shown())}
        return [index[item.item_id] for item in self.user.candidates]


def _history(header: str, ctx: UserContext) -> list[str]:
    return [header, *(f"- {item_line(item)}" for item in ctx.history)]


def ranking_messages(ctx: RankingContext) -> Messages:
    """The ranking prompt ([L4R] Fig. 2, top-k): history, (similar user's history,) the numbered candidates,
    (the conventional model's prediction,) and the answer format."""
    shown = ctx.shown()
    if not shown:
        raise ValueError(f"user {ctx.user.user_id} has no candidates")
    lines = _history(HISTORY_HEADER, ctx.user)
    if ctx.augmented and ctx.similar is not None:
        lines += _history(SIMILAR_HEADER, ctx.similar)
    lines += [CANDIDATES_HEADER, *(f"[{i}] {item_line(item)}" for i, item in enumerate(shown))]
    if ctx.augmented:
        lines.append(f"{PREDICTION_PREFIX} {', '.join(map(str, ctx.prediction()))}")
    lines.append(RANKING_INSTRUCTION.format(k=len(shown), last=len(shown) - 1))
    system = RANKING_SYSTEM.format(k=len(shown)) + (AUGMENTED_HINT if ctx.augmented else "")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


class RankingAnswer(BaseModel):
    """{"ranking": [i, ...]}: indices into the context's `k` shown candidates, best first. Every index is an
    integer in 0..k-1 named at most once, and there is at least one; candidates left out are allowed (the caller
    completes them)."""

    ranking: list[int]

    @field_validator("ranking", mode="before")
    @classmethod
    def _candidate_indices(cls, value: Any, info: ValidationInfo) -> list[int]:
        k = info.context["k"]
        if not isinstance(value, list):
            raise ValueError(f"ranking {_show(value)} is not a list of candidate indices")
        if not value:
            raise ValueError("ranking is empty")
        seen: set[int] = set()
        for entry in value:
            if not _is_int(entry):
                raise ValueError(f"ranking entry {_show(entry)} is not an integer candidate index")
            if not 0 <= entry < k:
                raise ValueError(f"ranking names {entry}, which is not a candidate index (0..{k - 1})")
            if entry in seen:
                raise ValueError(f"ranking names candidate {entry} twice")
            seen.add(entry)
        return value


def validate_ranking(text: str | None, ctx: RankingContext) -> dict[str, Any]:
    """{"item_ids": the candidates' raw item ids in the LLM's order, "completed": how many it left out} of a valid
    answer for `ctx`; the candidates it left out follow in the backbone's order. Raises InvalidAnswer."""
    shown = ctx.shown()
    answer: RankingAnswer = _validated(RankingAnswer, extract_json(text), k=len(shown))
    named = [shown[i].item_id for i in answer.ranking]
    ranked = set(named)
    rest = [item.item_id for item in ctx.user.candidates if item.item_id not in ranked]
    return {"item_ids": named + rest, "completed": len(rest)}


def rank_users(
    client: ChatClient,
    contexts: list[RankingContext],
    *,
    max_reasks: int,
    max_workers: int,
    tags: dict[str, str],
) -> list[ItemOutcome]:
    """One outcome per user, in input order; value {"item_ids", "completed"} (see `validate_ranking`). A user
    without candidates fails without a call."""
    return ask_each(client, contexts, key=lambda c: c.user.user_id,
                    skip=lambda c: None if c.user.candidates else "no candidates", messages=ranking_messages,
                    validate=validate_ranking, template_version=RANKING_VERSION, max_reasks=max_reasks,
                    max_workers=max_workers, tags=tags)

def rankings_frame(outcomes: Sequence[ItemOutcome], model: str) -> pd.DataFrame:
    """rankings: user_id, rank (1 = best), item_id (int64), completed (candidates the answer left out), asks
    (int64), model, prompt_hash — one row per candidate of each answered user."""
    rows = [{"user_id": o.key, "rank": r, "item_id": item, "completed": o.value["completed"], "asks": o.asks,
             "model": model, "prompt_hash": o.prompt_hash}
            for o in outcomes if o.ok and o.value is not None for r, item in enumerate(o.value["item_ids"], 1)]
    columns = {"user_id": "int64", "rank": "int64", "item_id": "int64", "completed": "int64", "asks": "int64",
               "model": "str", "prompt_hash": "str"}
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=t) for c, t in columns.items()},
                        columns=list(columns))
