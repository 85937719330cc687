"""The local server's answers to Llama4Rec's two prompts (recsys/augment/ranking.py and pairwise.py build them):
the listwise ranking of candidates and the pairwise preference. Not a language model: transparent, deterministic
rules over sentence embeddings of the `title | year | genres` lines in the prompt.

- Pairwise: for each pair, the movie whose embedding is closer (cosine) to the mean embedding of the user's
  history is preferred; ties and an empty history: "A".
- Ranking: Borda points per candidate, fewer is better: its rank by cosine to the user's history centroid
  (weight 1), plus, with prompt augmentation, half its rank by cosine to the similar user's history centroid and
  its position in the conventional model's prediction (weight 1). Sorted by points, ties by the prediction's order
  (or the candidate index without one). Without history and prediction it is the candidates' shown order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmsim.embedder import AsyncEmbedder
from llmsim.faults import Decision
from llmsim.heuristics import ItemLine, PromptError, message_text, parse_item_line
from recsys.augment.pairwise import PAIRS_HEADER
from recsys.augment.ranking import CANDIDATES_HEADER, HISTORY_HEADER, PREDICTION_PREFIX, SIMILAR_HEADER

SIMILAR_WEIGHT = 0.5  # the similar user's taste counts half as much as the user's own
PREDICTION_WEIGHT = 1.0
_HEADERS = (HISTORY_HEADER, SIMILAR_HEADER, CANDIDATES_HEADER, PAIRS_HEADER)


@dataclass(frozen=True)
class RankingPrompt:
    """A ranking prompt: the user's history, the similar user's (None without prompt augmentation), the numbered
    candidates and the conventional model's prediction (candidate indices, best first; None without)."""

    history: tuple[ItemLine, ...]
    similar: tuple[ItemLine, ...] | None
    candidates: tuple[ItemLine, ...]
    prediction: tuple[int, ...] | None


@dataclass(frozen=True)
class PairwisePrompt:
    """A pairwise prompt: the user's history and the (A, B) pairs in order."""

    history: tuple[ItemLine, ...]
    pairs: tuple[tuple[ItemLine, ItemLine], ...]


Prompt = RankingPrompt | PairwisePrompt


def _section(lines: list[str], header: str) -> list[str]:
    """The non-blank lines after `header` up to the next header of these prompts."""
    out: list[str] = []
    for line in lines[lines.index(header) + 1:]:
        if line in _HEADERS:
            break
        if line:
            out.append(line)
    return out


def _items(lines: list[str], header: str) -> tuple[ItemLine, ...]:
    return tuple(parse_item_line(line[2:]) for line in _section(lines, header) if line.startswith("- "))


def _numbered(line: str) -> tuple[int, str] | None:
    """(n, rest) of a `[n] rest` line, else None."""
    if not line.startswith("["):
        return None
    number, sep, rest = line[1:].partition("]")
    return (int(number), rest.strip()) if sep and number.lstrip("-").isdigit() else None


def _ranking(lines: list[str]) -> RankingPrompt:
    candidates = []
    for line in _section(lines, CANDIDATES_HEADER):
        numbered = _numbered(line)
        if numbered is None:
            break
        candidates.append(numbered)
    if [i for i, _ in candidates] != list(range(len(candidates))) or not candidates:
        raise PromptError("candidate movies must be numbered [0] to [k-1] in order")
    prediction = None
    for line in lines:
        if line.startswith(PREDICTION_PREFIX):
            try:
                prediction = tuple(int(p) for p in line[len(PREDICTION_PREFIX):].split(","))
            except ValueError:
                raise PromptError(f"'{PREDICTION_PREFIX}' must list candidate indices") from None
            if sorted(prediction) != list(range(len(candidates))):
                raise PromptError("the conventional model's prediction must rank every candidate once")
    return RankingPrompt(history=_items(lines, HISTORY_HEADER) if HISTORY_HEADER in lines else (),
                         similar=_items(lines, SIMILAR_HEADER) if SIMILAR_HEADER in lines else None,
                         candidates=tuple(parse_item_line(text) for _, text in candidates), prediction=prediction)


def _pairwise(lines: list[str]) -> PairwisePrompt:
    sides: dict[int, dict[str, ItemLine]] = {}
    for line in _section(lines, PAIRS_HEADER):
        numbered = _numbered(line)
        if numbered is None:
            break
        side, _, text = numbered[1].partition(": ")
        if side not in ("A", "B"):
            raise PromptError("each pair line must read '[i] A: ...' or '[i] B: ...'")
        sides.setdefault(numbered[0], {})[side] = parse_item_line(text)
    if not sides or sorted(sides) != list(range(len(sides))) or any(len(s) != 2 for s in sides.values()):
        raise PromptError("pairs must be numbered [0] to [n-1], each with an A and a B line")
    return PairwisePrompt(history=_items(lines, HISTORY_HEADER) if HISTORY_HEADER in lines else (),
                          pairs=tuple((sides[i]["A"], sides[i]["B"]) for i in range(len(sides))))


def parse_prompt(messages: list[dict[str, Any]]) -> Prompt | None:
    """The ranking or pairwise prompt in the first user message that holds one; None when no message does (the
    other prompts are `llmsim.heuristics`'). Raises PromptError for a malformed one."""
    for message in messages:
        if message.get("role") != "user":
            continue
        lines = [line.strip() for line in message_text(message).splitlines()]
        if CANDIDATES_HEADER in lines:
            return _ranking(lines)
        if PAIRS_HEADER in lines:
            return _pairwise(lines)
    return None


def _centroid_similarity(vectors: np.ndarray, centroid_of: np.ndarray) -> np.ndarray:
    """Cosine of each row of `vectors` (unit norm) to the mean of `centroid_of`; zeros for an empty history."""
    if len(centroid_of) == 0:
        return np.zeros(len(vectors))
    centroid = centroid_of.mean(axis=0)
    norm = float(np.linalg.norm(centroid))
    return vectors @ (centroid / norm if norm > 0 else centroid)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """0 for the highest score, ties in index order."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    return ranks


def ranking_order(history: np.ndarray, similar: np.ndarray | None, candidates: np.ndarray,
                  prediction: tuple[int, ...] | None) -> list[int]:
    """The candidate indices, best first, by the Borda rule of the module docstring."""
    k = len(candidates)
    points = _ranks(_centroid_similarity(candidates, history)) if len(history) else np.zeros(k)
    if similar is not None and len(similar):
        points = points + SIMILAR_WEIGHT * _ranks(_centroid_similarity(candidates, similar))
    place = np.arange(k, dtype=float)
    if prediction is not None:
        place[list(prediction)] = np.arange(k)
        points = points + PREDICTION_WEIGHT * place
    return sorted(range(k), key=lambda i: (points[i], place[i]))


def preferred(history: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[str]:
    """"A" or "B" per pair (rows of `a` and `b`): the one closer to the history centroid; ties: "A"."""
    sim_a, sim_b = _centroid_similarity(a, history), _centroid_similarity(b, history)
    return ["A" if x >= y else "B" for x, y in zip(sim_a, sim_b, strict=True)]


async def answer(prompt: Prompt, decision: Decision, embedder: AsyncEmbedder) -> tuple[str, str | None]:
    """The answer's text and the fault it carries (None: a genuine answer). The out-of-candidates fault names a
    candidate index that does not exist (ranking) or a choice that is neither A nor B (pairwise)."""
    if isinstance(prompt, RankingPrompt):
        similar = prompt.similar or ()
        texts = [item.text for item in (*prompt.history, *similar, *prompt.candidates)]
        vectors = await embedder.embed(texts)
        h, s = len(prompt.history), len(similar)
        order = ranking_order(vectors[:h], vectors[h:h + s] if prompt.similar is not None else None,
                              vectors[h + s:], prompt.prediction)
        if decision.out_of_candidates:
            return json.dumps({"ranking": [len(order), *order]}), "out_of_candidates"
        return json.dumps({"ranking": order}), None
    texts = [item.text for item in prompt.history] + [item.text for pair in prompt.pairs for item in pair]
    vectors = await embedder.embed(texts)
    h = len(prompt.history)
    choices = preferred(vectors[:h], vectors[h::2], vectors[h + 1::2])
    if decision.out_of_candidates:
        return json.dumps({"preferred": ["C", *choices[1:]]}), "out_of_candidates"
    return json.dumps({"preferred": choices}), None
