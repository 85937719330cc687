"""The local server's answers to LLM4IDRec generation prompts (recsys/llm4idrec/prompts.py builds them):
"Given the user(u<id>)'s clicked list items:i5,i9,i42, predict what is the list items to recommend to the
user(u<id>). Please only answer the item IDs.", answered with a comma-separated `i<id>` list.

This is a transparent heuristic, not a language model. When a fine-tuning job succeeds (llmsim/fine_tuning.py),
`learn` reads its training file (chat JSONL, recsys/llm4idrec/jsonl.py) and counts, for every record, each
(history item of the prompt, item of the assistant's target) pair, plus how often each item appears in a target.
The server keeps that `IDRecModel` in memory under the job's `fine_tuned_model` id (`Simulator.idrec_models`); it
is lost when the server restarts, as the fine-tuned model ids then are.

- A fine-tuned model of this server (`answer` with a model): each item's score is the sum of its co-occurrence
  counts with the prompt's history items plus its target popularity divided by the highest one (a prior below one
  co-occurrence, so it orders items the history says nothing about). History items are never answered. N items
  are drawn one at a time without replacement, as a decoder draws tokens: probabilities ∝ score^(1/temperature),
  cut to the nucleus `top_p`; temperature 0 is greedy (ties: the lower item id). N is the median target length of
  the training file, at most `MAX_ANSWER_ITEMS`. The draw is seeded by the request's `seed`, else by a hash of the
  prompt, so the same request always gets the same answer.
- Any other model (e.g. the server's default id, or a job whose file held no LLM4IDRec record): the answer mimics
  an untuned small model that repeats its prompt: the last `ECHO_ITEMS` history items (which LLM4IDRec's parser
  drops as `in_history`), or the user's own `u<id>` token for an empty history.

The edge/ranking answer faults (out_of_candidates, first_listed) do not apply to these prompts; the malformed and
wrapped faults, truncation at `max_tokens` and the HTTP faults do (llmsim/app.py `complete`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from llmsim.heuristics import PromptError, message_text
from recsys.llm4idrec.parse import ITEM_TOKEN
from recsys.llm4idrec.prompts import item_list, user_token

MAX_ANSWER_ITEMS = 20  # about 60 cl100k tokens: well inside LLM4IDRec's 200 new tokens
ECHO_ITEMS = 5
DEFAULT_TEMPERATURE = 1.0  # OpenAI's defaults when a request names none
DEFAULT_TOP_P = 1.0
_PAIRS_PER_CHUNK = 4_000_000  # co-occurrence pairs summed per sparse matrix while learning (bounds memory)

_PROMPT = re.compile(r"Given the user\(u(\d+)\)'s clicked list items:(.*?), predict what is the list items to "
                     r"recommend to the user\(u\1\)", re.DOTALL)
_PIECE = re.compile(r"^i(\d+)$")


@dataclass(frozen=True)
class IDRecPrompt:
    """An LLM4IDRec generation prompt: the user's raw id and the history item ids in prompt order."""

    user_id: int
    history: tuple[int, ...]


@dataclass(frozen=True)
class Sampling:
    """How a request asks to decode: `temperature` >= 0 (0: greedy), `top_p` in [0, 1] (0: the likeliest item
    only), the draw's `seed`."""

    temperature: float
    top_p: float
    seed: int


@dataclass(frozen=True)
class IDRecModel:
    """What `learn` counted in one training file.

    items: (n,) int64 sorted raw item ids seen in a prompt or a target; cooccurrence: (n, n) CSR counts, row =
    history item index, column = target item index; popularity: (n,) float64, times each item is in a target;
    answer_length: items per answer; examples: records learned from."""

    items: np.ndarray
    cooccurrence: sparse.csr_array
    popularity: np.ndarray
    answer_length: int
    examples: int

    def scores(self, history: tuple[int, ...]) -> np.ndarray:
        """(n,) co-occurrence sum over the known history items plus popularity / max popularity; 0 for history
        items and for items never in a target."""
        wanted = np.asarray(history, dtype=np.int64)
        index = np.minimum(np.searchsorted(self.items, wanted), self.items.size - 1)
        index = index[self.items[index] == wanted]  # history items the training file never mentioned: ignored
        scores = self.popularity / max(float(self.popularity.max()), 1.0)
        if index.size:
            scores = scores + np.asarray(self.cooccurrence[index].sum(axis=0)).ravel()
        scores[index] = 0.0
        return np.where(self.popularity > 0, scores, 0.0)


# --- parsing ---------------------------------------------------------------------------------------------------------
def parse_history(text: str) -> tuple[int, ...]:
    """The item ids of a prompt's `i5,i9,i42` list (empty text: none); PromptError naming a piece that is not
    `i<id>`."""
    if not text.strip():
        return ()
    history = []
    for piece in text.split(","):
        match = _PIECE.match(piece.strip())
        if match is None:
            raise PromptError(f"LLM4IDRec prompt: history piece {piece.strip()!r} is not i<id>")
        history.append(int(match.group(1)))
    return tuple(history)


def parse_prompt(messages: list[dict[str, Any]]) -> IDRecPrompt | None:
    """The LLM4IDRec prompt of the first user message that holds one; None when no message does. Raises
    PromptError for a malformed history list."""
    for message in messages:
        if message.get("role") != "user":
            continue
        match = _PROMPT.search(message_text(message))
        if match is not None:
            return IDRecPrompt(user_id=int(match.group(1)), history=parse_history(match.group(2)))
    return None


def sampling(temperature: float | None, top_p: float | None, seed: int | None,
             messages: list[dict[str, Any]]) -> Sampling:
    """The request's decoding settings; an absent seed is the first 8 bytes of sha256 of the messages' text."""
    if seed is None:
        text = "\n".join(message_text(m) for m in messages)
        seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return Sampling(DEFAULT_TEMPERATURE if temperature is None else temperature,
                    DEFAULT_TOP_P if top_p is None else top_p, seed & (2**64 - 1))  # numpy takes seeds >= 0


# --- learning --------------------------------------------------------------------------------------------------------
def _example(line: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(history, target) of one JSONL line, None when it is not an LLM4IDRec record."""
    try:
        messages = json.loads(line)["messages"]
        prompt = parse_prompt(messages)
        target = next(message_text(m) for m in messages if m.get("role") == "assistant")
    except (ValueError, KeyError, TypeError, StopIteration):  # PromptError is a ValueError
        return None
    if prompt is None:
        return None
    return prompt.history, tuple(int(i) for i in ITEM_TOKEN.findall(target))


def learn(content: bytes) -> IDRecModel | None:
    """The co-occurrence model of a chat JSONL training file (module docstring); None when no line is an LLM4IDRec
    record naming an item (the file was for something else). Lines that are not such records are skipped."""
    examples = [ex for line in content.decode("utf-8", errors="replace").splitlines()
                if line.strip() and (ex := _example(line)) is not None]
    items = np.unique(np.fromiter((i for h, t in examples for i in (*h, *t)), dtype=np.int64))
    if items.size == 0:
        return None
    shape = (items.size, items.size)
    popularity = np.zeros(items.size)
    cooccurrence = sparse.csr_array(shape, dtype=np.float64)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    pending = 0
    for n, (history, target) in enumerate(examples, 1):
        h = np.searchsorted(items, np.asarray(history, dtype=np.int64))
        t = np.searchsorted(items, np.asarray(target, dtype=np.int64))
        np.add.at(popularity, t, 1.0)
        rows.append(np.repeat(h, t.size))
        cols.append(np.tile(t, h.size))
        pending += h.size * t.size
        if n == len(examples) or pending >= _PAIRS_PER_CHUNK:
            r, c = np.concatenate(rows), np.concatenate(cols)
            cooccurrence = cooccurrence + sparse.coo_array((np.ones(r.size), (r, c)), shape=shape).tocsr()
            rows, cols, pending = [], [], 0
    length = int(round(float(np.median([len(t) for _, t in examples]))))
    return IDRecModel(items, cooccurrence, popularity, min(max(length, 1), MAX_ANSWER_ITEMS), len(examples))


# --- answering -------------------------------------------------------------------------------------------------------
def draw(scores: np.ndarray, n: int, how: Sampling) -> list[int]:
    """Up to `n` distinct indices of positive `scores`, drawn one at a time as the module docstring says."""
    rng = np.random.default_rng(how.seed)
    left = np.flatnonzero(scores > 0)
    chosen: list[int] = []
    while left.size and len(chosen) < n:
        s = scores[left]
        if how.temperature == 0:
            pick = int(np.argmax(s))
        else:
            logits = np.log(s) / how.temperature
            p = np.exp(logits - logits.max())
            p /= p.sum()
            order = np.argsort(-p, kind="stable")
            keep = order[:int(np.searchsorted(np.cumsum(p[order]), how.top_p)) + 1]
            pick = int(rng.choice(keep, p=p[keep] / p[keep].sum()))
        chosen.append(int(left[pick]))
        left = np.delete(left, pick)
    return chosen


def answer(prompt: IDRecPrompt, model: IDRecModel | None, how: Sampling) -> str:
    """The answer text: drawn from `model` when the request's model is one this server fine-tuned, else the
    untuned echo (module docstring)."""
    if model is None:
        return item_list(prompt.history[-ECHO_ITEMS:]) if prompt.history else user_token(prompt.user_id)
    chosen = draw(model.scores(prompt.history), model.answer_length, how)
    return item_list(model.items[chosen].tolist())
