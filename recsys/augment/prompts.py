"""Versioned prompt templates for the three LLMRec augmentations (paper §3.1) and the data they are built from.

Every prompt is two chat messages: a system message (the task) and a user message (the data). The official scripts
put both in one user message and ask for `pos::neg` / `director::country::language` text (see the reference notes
§A.3); here every answer is a JSON object, so it can be validated strictly. Each template has a version constant
that is part of every response-cache key: change the wording, bump the version.

Only TRAINING interactions reach a prompt (`build_user_contexts` is never given valid/test data), and every text
field is sanitised first, so an item title cannot add prompt lines or fake `[i]` candidate markers. An item
without text (no title) never reaches a prompt: it would be a line of 'unknown's the model can only invent from.
`*_skip_reason` say why a user or item cannot be asked at all (recsys/data/degenerate.py).
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd

EDGES_VERSION = "edges-v1"
PROFILES_VERSION = "profiles-v1"
ATTRIBUTES_VERSION = "attributes-v1"

MAX_FIELD_CHARS = 200
MISSING_TEXT = "unknown"  # shown for an absent year or empty genres, so every line keeps its three fields

EDGES_SYSTEM = (
    "You are a movie recommendation system. Based on the user's viewing history (title, year, genres), choose from "
    "the candidate list the movie the user will like most and the one the user will like least."
)
PROFILES_SYSTEM = (
    "You are required to generate a user profile based on the user's viewing history (title, year, genres). "
    "Do not answer 'unknown': make an educated guess."
)
ATTRIBUTES_SYSTEM = (
    "You are a movie search engine. Provide the director, country and language of each movie below."
)
EDGES_INSTRUCTION = (
    'Answer with JSON only, no reasoning: {{"liked": <candidate index>, "disliked": <candidate index>}}. '
    "Both indices must come from the candidate list (0 to {last}) and must differ."
)
PROFILES_INSTRUCTION = (
    'Answer with JSON only: {"age": <integer>, "gender": "male" or "female", "liked_genres": [...], '
    '"disliked_genres": [...], "liked_directors": [...], "country": "...", "language": "..."}'
)
ATTRIBUTES_INSTRUCTION = (
    'Answer with JSON only: {"items": [{"id": <item id>, "director": "...", "country": "...", "language": "..."}, '
    "...]} with one entry per movie above."
)

Messages = list[dict[str, str]]

_WHITESPACE = re.compile(r"\s+")  # includes \n, \r, \x1c-\x1f, \x85, \u2028, \u2029: everything splitlines() breaks on
_BRACKETS = str.maketrans({"[": "(", "]": ")", "{": "(", "}": ")", "［": "(", "］": ")", "｛": "(", "｝": ")"})


@dataclass(frozen=True)
class ItemText:
    """The text of one item as shown to the LLM. `genres` may be '|'-joined (dataset form) or ', '-joined."""

    item_id: int
    title: str
    year: int | None
    genres: str


@dataclass(frozen=True)
class UserContext:
    """One user's prompt data, from training interactions only.

    history: training items in train-row order (those kept when cut: see `keep`).
    candidates: the base model's candidates without training items, in the order the prompt lists them: best
    first, or shuffled (`shuffle_candidates`); `order[i]` is the base-model position (0 = best) of candidate i.
    train_item_ids: ALL of the user's training items (also those cut from a truncated history), so a liked or
    disliked item can be checked against the full history.
    keep: the history's positions in the order they are kept when the prompt must be shorter (most recent first
    where there are timestamps, else highest rated, else latest training row); empty means latest row first.
    history_cut: how many training items were cut from the history shown.
    """

    user_id: int
    history: list[ItemText]
    candidates: list[ItemText]
    train_item_ids: frozenset[int] = field(default_factory=frozenset)
    order: tuple[int, ...] = ()
    keep: tuple[int, ...] = ()
    history_cut: int = 0

    def forbidden_item_ids(self) -> frozenset[int]:
        """Items an edge answer must not name: the user's training items."""
        return self.train_item_ids | {item.item_id for item in self.history}

    def base_rank(self, index: int) -> int:
        """The base model's position (0 = its best) of the candidate listed at `index`."""
        return self.order[index] if self.order else index

    def with_history(self, n: int) -> UserContext:
        """This context with only the `n` history items kept first (see `keep`), in their original order."""
        keep = self.keep or tuple(range(len(self.history) - 1, -1, -1))
        kept = sorted(keep[:max(0, n)])
        return replace(self, history=[self.history[i] for i in kept], keep=tuple(
            kept.index(i) for i in keep[:max(0, n)]), history_cut=self.history_cut + len(self.history) - len(kept))


def sanitize(text: object) -> str:
    """One safe line of at most 200 characters: whitespace runs (newlines included) become one space, other
    control/format characters are dropped, and brackets []{} become (), so the text cannot start a new prompt
    line or imitate a `[i]` marker."""
    if text is None or (isinstance(text, float) and text != text):  # None or NaN
        return ""
    s = _WHITESPACE.sub(" ", str(text))
    s = "".join(ch for ch in s if not unicodedata.category(ch).startswith("C"))
    return s.translate(_BRACKETS).strip()[:MAX_FIELD_CHARS].strip()


def has_text(item: ItemText) -> bool:
    """Whether the item has a title to show (after sanitising)."""
    return bool(sanitize(item.title))


NO_TEXT = "no item text: the item has no title (pass an item table with --items)"


def item_skip_reason(item: ItemText) -> str | None:
    """Why an item cannot be asked about (attributes stage), or None."""
    return None if has_text(item) else NO_TEXT


def profile_skip_reason(ctx: UserContext) -> str | None:
    """Why a user cannot be profiled, or None: a profile of nothing would be pure invention."""
    if ctx.history:
        return None
    if ctx.train_item_ids:
        return f"no training item with text (none of the {len(ctx.train_item_ids)} has a title)"
    return "no training history"


def edges_skip_reason(ctx: UserContext) -> str | None:
    """Why a user cannot be asked for a liked and a disliked candidate, or None."""
    if not ctx.candidates:
        return "no candidates"
    if len(ctx.candidates) < 2:
        return "fewer than 2 candidates: liked and disliked must differ"
    return profile_skip_reason(ctx)


def _genres_text(genres: str) -> str:
    parts = [sanitize(g) for g in re.split(r"[|,]", genres or "")]
    return ", ".join(p for p in parts if p) or MISSING_TEXT


def item_line(item: ItemText) -> str:
    """`<title> | <year> | <genres>` with sanitised fields; '|' inside a title becomes '/' so that the three
    fields stay unambiguous."""
    title = sanitize(item.title).replace("|", "/")
    year = str(int(item.year)) if item.year is not None else MISSING_TEXT
    return f"{title} | {year} | {_genres_text(item.genres)}"


def _history_lines(ctx: UserContext) -> list[str]:
    return ["User history:", *(f"- {item_line(item)}" for item in ctx.history)]


def edges_messages(ctx: UserContext) -> Messages:
    """The edge-augmentation prompt: pick a liked and a disliked candidate by index (paper §3.1.1)."""
    if not ctx.candidates:
        raise ValueError(f"user {ctx.user_id} has no candidates")
    lines = _history_lines(ctx) + ["Candidates:"]
    lines += [f"[{i}] {item_line(item)}" for i, item in enumerate(ctx.candidates)]
    lines.append(EDGES_INSTRUCTION.format(last=len(ctx.candidates) - 1))
    return [{"role": "system", "content": EDGES_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def profile_messages(ctx: UserContext) -> Messages:
    """The user-profiling prompt (paper §3.1.2), with the official fields as JSON keys."""
    lines = _history_lines(ctx) + [PROFILES_INSTRUCTION]
    return [{"role": "system", "content": PROFILES_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def attributes_messages(items: Sequence[ItemText]) -> Messages:
    """The item-attribute prompt for several items at once (the official script sends one per request)."""
    if not items:
        raise ValueError("attributes_messages needs at least one item")
    lines = ["Movies:", *(f"[{int(item.item_id)}] {item_line(item)}" for item in items), ATTRIBUTES_INSTRUCTION]
    return [{"role": "system", "content": ATTRIBUTES_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def item_texts(items: pd.DataFrame, item_ids: Iterable[int] | None = None) -> dict[int, ItemText]:
    """ItemText by item id from an items table (item_id, title, year nullable, genres), for `item_ids` or all."""
    table = items.set_index("item_id", drop=False)
    if item_ids is not None:
        wanted = pd.Index(pd.unique(pd.Series(list(item_ids), dtype="int64")))
        missing = wanted.difference(table.index)
        if len(missing):
            raise ValueError(f"item {int(missing[0])} is not in the items table ({len(missing)} items missing)")
        table = table.loc[wanted]
    years = table["year"] if "year" in table else pd.Series(pd.NA, index=table.index)
    genres = table["genres"] if "genres" in table else pd.Series("", index=table.index)
    out: dict[int, ItemText] = {}
    for item_id, title, year, genre in zip(table["item_id"], table["title"], years, genres, strict=True):
        out[int(item_id)] = ItemText(
            int(item_id),
            "" if pd.isna(title) else str(title),
            None if pd.isna(year) else int(year),
            "" if pd.isna(genre) else str(genre),
        )
    return out


def shuffled_order(user_id: int, n: int, seed: int) -> tuple[int, ...]:
    """A permutation of range(n) that depends only on (seed, user_id): the same user is shown the same order in
    any batch, trial subset or re-run (so the answers already paid for are found again)."""
    digest = hashlib.sha256(f"{seed}:{int(user_id)}".encode()).digest()
    order = list(range(n))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return tuple(order)


def _keep_order(rows: pd.DataFrame) -> list[int]:
    """Positions of a user's history rows (train-row order) in the order they are kept: most recent first where
    every row has a timestamp, else highest rated where every row has a rating, else latest row first; ties go
    to the later row."""
    position = list(range(len(rows)))
    for column in ("timestamp", "rating"):
        if column in rows and len(rows) and rows[column].notna().all():
            values = rows[column].tolist()
            return sorted(position, key=lambda i: (values[i], i), reverse=True)
    return position[::-1]


def build_user_contexts(
    train: pd.DataFrame,
    items: pd.DataFrame,
    candidates: pd.DataFrame,
    user_ids: Iterable[int],
    max_history: int | None,
    shuffle_seed: int | None = None,
) -> list[UserContext]:
    """One UserContext per user id (in the given order) from TRAINING interactions only.

    train: (user_id, item_id[, timestamp, rating]) in train-row order; a repeated item keeps its last position.
    History = the user's training items with text in that order; with `max_history`, only the first `max_history`
    of them in keep order (`UserContext.keep`: most recent by timestamp, else highest rated, else latest row) are
    shown (None: all, as the official code).
    candidates: (user_id, rank, item_id, score); training items and items without text are dropped; listed best
    first, or in `shuffled_order(user, k, shuffle_seed)` when `shuffle_seed` is given. A user with no candidates
    gets an empty list; a user with no training rows gets an empty history. Raw ids may be any int64 (negative
    ones too).
    """
    if max_history is not None and max_history < 1:
        raise ValueError(f"max_history must be >= 1 or None, got {max_history}")
    users = [int(u) for u in user_ids]
    wanted = set(users)
    columns = ["user_id", "item_id", *(c for c in ("timestamp", "rating") if c in train)]
    rows = train.loc[train["user_id"].isin(wanted), columns]
    rows = rows.drop_duplicates(["user_id", "item_id"], keep="last")
    cands = candidates.loc[candidates["user_id"].isin(wanted) & candidates["item_id"].notna()]
    cands = cands[["user_id", "rank", "item_id"]].astype("int64")
    cands = cands.sort_values(["user_id", "rank"], kind="stable")
    history_of = {int(u): g for u, g in rows.groupby("user_id", sort=False)}
    cands_of = {int(u): g["item_id"].tolist() for u, g in cands.groupby("user_id", sort=False)}
    texts = item_texts(items, [*rows["item_id"].astype("int64").tolist(), *cands["item_id"].tolist()])
    texts = {i: t for i, t in texts.items() if has_text(t)}

    contexts = []
    for user in users:
        own = history_of.get(user, rows.iloc[:0])
        full = own["item_id"].astype("int64").tolist()
        seen = set(full)
        own = own[own["item_id"].astype("int64").isin(list(texts))]  # the history shows items with text only
        # Candidates from our base model never contain training items; the official candidates could, and the
        # official prompt could only ask the model to avoid them. Here they are never offered.
        offered = list(dict.fromkeys(i for i in cands_of.get(user, []) if i not in seen and i in texts))
        order = tuple(range(len(offered))) if shuffle_seed is None else shuffled_order(user, len(offered),
                                                                                        shuffle_seed)
        ctx = UserContext(
            user_id=user,
            history=[texts[i] for i in own["item_id"].astype("int64")],
            candidates=[texts[offered[i]] for i in order],
            train_item_ids=frozenset(full),
            order=order,
            keep=tuple(_keep_order(own)),
        )
        contexts.append(ctx.with_history(max_history) if max_history is not None else ctx)
    return contexts


def fit_history(ctx: UserContext, build: Callable[[UserContext], Messages], max_tokens: int,
                count: Callable[[Messages], int]) -> tuple[UserContext, int]:
    """`ctx` with the longest history (cut in keep order) whose prompt `build(ctx)` counts at most `max_tokens`
    tokens, and that prompt's token count; the whole history when it fits. When even one history item does not
    fit, the context with one item and its (too large) count: the caller must not send it."""
    tokens = count(build(ctx))
    if tokens <= max_tokens or len(ctx.history) <= 1:
        return ctx, tokens
    lo, hi = 1, len(ctx.history) - 1  # the largest n in [lo, hi] that fits; lo is the fallback
    best = (ctx.with_history(1), count(build(ctx.with_history(1))))
    if best[1] > max_tokens:
        return best
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cut = ctx.with_history(mid)
        n = count(build(cut))
        if n <= max_tokens:
            lo, best = mid, (cut, n)
        else:
            hi = mid - 1
    return best
