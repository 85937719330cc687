"""Prompt parsing and the transparent heuristics behind the local server's answers.

This server is not a language model: its answers are simple, documented, deterministic rules over the data in the
prompt (sentence-embedding similarity for edges, genre counts for profiles, title patterns for attributes). They are
good enough to exercise the pipeline end to end offline; they carry no knowledge a real LLM would add.

The prompt formats are those of the shared contract (recsys/augment/prompts.py builds them): the user message holds
a `User history:` section of `- title | year | genres` lines, and either a `Candidates:` section of `[i] ...` lines
(edges), a `Movies:` section of `[item_id] ...` lines (attributes), or neither (profiles).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

HISTORY_HEADER = "User history:"
CANDIDATES_HEADER = "Candidates:"
MOVIES_HEADER = "Movies:"

# The 18 MovieLens genres (u.genre without "unknown"), in MovieLens order; used for disliked genres and tie-breaks.
MOVIELENS_GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
UNKNOWN_DIRECTOR = "not known to the local server"
REFERENCE_YEAR = 1998  # MovieLens 100K was collected in 1997-98

_NON_JSON_ANSWERS = (
    "Sure! I think the user would like the second one.",
    "As an AI language model, I cannot know this user's preferences for certain, but they seem to enjoy dramas.",
    "Based on the viewing history, the user probably enjoys classic movies and dislikes horror.",
)

_INDEXED_LINE = re.compile(r"^\[(-?\d+)\]\s*(.*)$")
_YEAR = re.compile(r"^\d{4}$")
_TRAILING_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
# "Postino, Il (1994)", "Contempt (Mépris, Le) (1963)": MovieLens moves a title's leading article to the end.
_FOREIGN_ARTICLE = re.compile(r",\s*(L'|La|Le|Les|Une|Il|Lo|Gli|Der|Die|Das|El|Los|Las)(?=\s*(?:\(|\)|$))")
_ARTICLE_ORIGIN: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("L'", "La", "Le", "Les", "Une"), ("France", "French")),
    **dict.fromkeys(("Il", "Lo", "Gli"), ("Italy", "Italian")),
    **dict.fromkeys(("Der", "Die", "Das"), ("Germany", "German")),
    **dict.fromkeys(("El", "Los", "Las"), ("Spain", "Spanish")),
}
_LETTER_ORIGIN: tuple[tuple[str, tuple[str, str]], ...] = (
    ("çéèêàâîôûœ", ("France", "French")),
    ("ñ", ("Spain", "Spanish")),
    ("ßäü", ("Germany", "German")),
)
FOREIGN_UNKNOWN = ("unknown", "unknown")


class PromptError(ValueError):
    """The request's messages do not hold a section this server understands (answered with HTTP 400)."""


@dataclass(frozen=True)
class ItemLine:
    """One `title | year | genres` line."""

    text: str  # the whole line after its marker, as embedded
    title: str
    year: int | None
    genres: tuple[str, ...]


@dataclass(frozen=True)
class EdgesPrompt:
    """An edge-augmentation prompt: the history and the numbered candidates."""

    history: tuple[ItemLine, ...]
    candidates: tuple[ItemLine, ...]  # candidate i is at position i


@dataclass(frozen=True)
class ProfilePrompt:
    """A user-profiling prompt: the history only."""

    history: tuple[ItemLine, ...]


@dataclass(frozen=True)
class AttributesPrompt:
    """An item-attribute prompt: the asked movies with their ids."""

    movies: tuple[tuple[int, ItemLine], ...]  # (item id, line)


Prompt = EdgesPrompt | ProfilePrompt | AttributesPrompt


# --- parsing ---------------------------------------------------------------------------------------------------------
def message_text(message: dict[str, Any]) -> str:
    """A chat message's text: a string content, or the text parts of a list content."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def parse_item_line(text: str) -> ItemLine:
    """`title | year | genres` (genres joined by ", "); a missing or non-numeric year is None."""
    text = text.strip()
    parts = text.rsplit(" | ", 2)
    title, year_text, genres_text = parts if len(parts) == 3 else (text, "", "")
    year = int(year_text) if _YEAR.match(year_text.strip()) else None
    genres = tuple(g.strip() for g in genres_text.split(",") if g.strip())
    return ItemLine(text=text, title=title.strip(), year=year, genres=genres)


def _section(lines: list[str], header: str) -> list[str]:
    """The non-blank lines after `header` up to the next known header (or the end)."""
    start = lines.index(header) + 1
    out: list[str] = []
    for line in lines[start:]:
        if line in (HISTORY_HEADER, CANDIDATES_HEADER, MOVIES_HEADER):
            break
        if line:
            out.append(line)
    return out


def _history(lines: list[str]) -> tuple[ItemLine, ...]:
    if HISTORY_HEADER not in lines:
        raise PromptError(f"the prompt has no '{HISTORY_HEADER}' section")
    # An empty history is allowed (a user without training rows): the rules below have defaults for it.
    return tuple(parse_item_line(line[2:]) for line in _section(lines, HISTORY_HEADER) if line.startswith("- "))


def _indexed(lines: list[str], header: str) -> list[tuple[int, ItemLine]]:
    """The contiguous `[n] ...` lines right after `header` (the instruction line after them ends the list)."""
    out: list[tuple[int, ItemLine]] = []
    for line in _section(lines, header):
        match = _INDEXED_LINE.match(line)
        if match is None:
            break
        out.append((int(match.group(1)), parse_item_line(match.group(2))))
    return out


def parse_prompt(messages: list[dict[str, Any]]) -> Prompt:
    """Find the data message (the first user message with a known section header; later user messages may be
    corrections after a bad answer) and parse it. Raises PromptError when nothing is recognisable or malformed."""
    for message in messages:
        if message.get("role") != "user":
            continue
        lines = [line.strip() for line in message_text(message).splitlines()]
        if CANDIDATES_HEADER in lines:
            history = _history(lines)
            candidates = _indexed(lines, CANDIDATES_HEADER)
            if [i for i, _ in candidates] != list(range(len(candidates))):
                raise PromptError("candidates must be numbered [0] to [k-1] in order")
            if len(candidates) < 2:
                raise PromptError("an edge prompt needs at least 2 candidates")
            return EdgesPrompt(history=history, candidates=tuple(item for _, item in candidates))
        if MOVIES_HEADER in lines:
            movies = _indexed(lines, MOVIES_HEADER)
            if not movies:
                raise PromptError(f"the '{MOVIES_HEADER}' section lists no '[item_id] title | year | genres' lines")
            if len({i for i, _ in movies}) != len(movies):
                raise PromptError("the movie ids must be distinct")
            return AttributesPrompt(movies=tuple(movies))
        if HISTORY_HEADER in lines:
            return ProfilePrompt(history=_history(lines))
    raise PromptError(f"no '{CANDIDATES_HEADER}', '{MOVIES_HEADER}' or '{HISTORY_HEADER}' section in any user message")


# --- edges -----------------------------------------------------------------------------------------------------------
def edge_choice(history_vectors: np.ndarray, candidate_vectors: np.ndarray) -> tuple[int, int]:
    """(liked, disliked) candidate positions. The user vector is the mean of the (unit-norm) history embeddings;
    liked = the candidate with the highest cosine similarity to it, disliked = the lowest among the others (ties: the
    lower index). With an empty history: the first and the last candidate (candidates are listed best first).
    Always liked != disliked (needs at least 2 candidates)."""
    if len(history_vectors) == 0:
        return 0, len(candidate_vectors) - 1
    user = history_vectors.mean(axis=0)
    norm = float(np.linalg.norm(user))
    user = user / norm if norm > 0 else user
    norms = np.linalg.norm(candidate_vectors, axis=1)
    sims = candidate_vectors @ user / np.where(norms > 0, norms, 1.0)
    liked = int(np.argmax(sims))
    others = np.delete(np.arange(len(sims)), liked)
    disliked = int(others[np.argmin(sims[others])])
    return liked, disliked


def edges_answer(liked: int, disliked: int) -> str:
    """The JSON answer text of an edge prompt."""
    return json.dumps({"liked": liked, "disliked": disliked})


def out_of_candidates_answer(k: int, disliked: int, draw: float) -> str:
    """A wrong edge answer whose `liked` index is outside [0, k): k or 99 (as the fault injection asks)."""
    bad = k if draw < 0.5 or k > 99 else 99
    return json.dumps({"liked": bad, "disliked": disliked})


def first_listed_answer(k: int) -> str:
    """An edge answer that follows the list, not the history (position bias): liked is the first candidate listed,
    disliked the last."""
    return edges_answer(0, k - 1)


def _pick(options: tuple[str, ...], draw: float) -> str:
    return options[min(int(draw * len(options)), len(options) - 1)]


def non_json_answer(draw: float) -> str:
    """A chatty answer with no JSON object in it (for the malformed fault)."""
    return _pick(_NON_JSON_ANSWERS, draw)


def json_non_answer(draw: float) -> str:
    """A JSON object that is not the answer: what JSON mode without a schema lets a confused model say."""
    return json.dumps({"answer": non_json_answer(draw)})


_WRAPPINGS = (
    "```json\n{answer}\n```",
    "```\n{answer}\n```",
    "Sure! Here is the answer:\n```JSON\n{answer}\n```\nLet me know if you need anything else.",
    'An example of the format:\n```json\n{{"example": true}}\n```\nMy answer:\n```json\n{answer}\n```',
    "Based on the history, my answer is {answer} because of the genres {{mostly}}.",
    "Answer:\n{answer}\n\nThe reasoning follows the user's favourite genres.",
)


def wrapped_answer(answer: str, draw: float) -> str:
    """`answer` wrapped as chat models often wrap JSON: in a fence with a language tag or none, with prose around,
    after an example object in another fence, or on its own line."""
    return _pick(_WRAPPINGS, draw).format(answer=answer)


# --- attributes ------------------------------------------------------------------------------------------------------
def guess_origin(title: str) -> tuple[str, str] | None:
    """(country, language) for a title that looks foreign, None for one that does not (-> USA/English).

    Rules, in order: a MovieLens-style trailing article ("Postino, Il (1994)", also inside an alternative title in
    parentheses) maps La/Le/Les/L'/Une -> France/French, Il/Lo/Gli -> Italy/Italian, Der/Die/Das -> Germany/German,
    El/Los/Las -> Spain/Spanish; otherwise non-ASCII letters map French accents -> France, ñ -> Spain, ß/ä/ü ->
    Germany, and any other non-ASCII letter -> ("unknown", "unknown")."""
    match = _FOREIGN_ARTICLE.search(title)
    if match:
        return _ARTICLE_ORIGIN[match.group(1)]
    if title.isascii():
        return None
    lowered = title.lower()
    for letters, origin in _LETTER_ORIGIN:
        if any(ch in lowered for ch in letters):
            return origin
    if any(not ch.isascii() and ch.isalpha() for ch in title):
        return FOREIGN_UNKNOWN
    return None


def attributes_answer(prompt: AttributesPrompt) -> str:
    """One entry per asked movie: director is never guessed (the server has no knowledge of it); country and
    language come from `guess_origin` (default USA/English)."""
    items = []
    for item_id, item in prompt.movies:
        country, language = guess_origin(item.title) or ("USA", "English")
        items.append({"id": item_id, "director": UNKNOWN_DIRECTOR, "country": country, "language": language})
    return json.dumps({"items": items})


# --- profiles --------------------------------------------------------------------------------------------------------
def _genre_key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


_GENRE_ORDER = {_genre_key(g): i for i, g in enumerate(MOVIELENS_GENRES)}
_KIDS = {_genre_key("Children's"), _genre_key("Children"), _genre_key("Animation")}
_SOFT = {_genre_key("Romance"), _genre_key("Drama")}
_HARD = {_genre_key("Action"), _genre_key("Sci-Fi")}


def _share(history: tuple[ItemLine, ...], keys: set[str]) -> float:
    """Share of history movies with at least one genre in `keys` (0 for an empty history)."""
    if not history:
        return 0.0
    return sum(any(_genre_key(g) in keys for g in item.genres) for item in history) / len(history)


def profile(history: tuple[ItemLine, ...]) -> dict[str, Any]:
    """A user profile from the history by fixed rules:

    - liked_genres: the 3 most frequent genres (ties: MovieLens genre order, then first appearance);
    - disliked_genres: the 3 of the 18 MovieLens genres seen least often (often never), not among the liked ones
      (ties: MovieLens order);
    - age = 18 + min(42, round(1.5 * max(0, 1998 - mean release year))) - round(8 * share of Children's/Animation
      movies): a history of older films suggests an older viewer, one of children's films a younger one (10..60);
    - gender = "female" if the share of Romance-or-Drama movies exceeds the share of Action-or-Sci-Fi movies, else
      "male" (ties: "male");
    - liked_directors = [] (the server knows no directors);
    - country/language = the most common `guess_origin` of the titles if more than half of them look foreign,
      else USA/English.
    An empty history gives age 18, "male", no liked genres, the first 3 MovieLens genres as disliked, USA/English.
    """
    counts: Counter[str] = Counter()
    names: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for item in history:
        for genre in item.genres:
            key = _genre_key(genre)
            if not key or key in ("unknown", "nogenreslisted"):
                continue
            counts[key] += 1
            names.setdefault(key, genre)
            first_seen.setdefault(key, len(first_seen))
    ranked = sorted(counts, key=lambda k: (-counts[k], _GENRE_ORDER.get(k, len(_GENRE_ORDER)), first_seen[k]))
    liked = ranked[:3]
    disliked = sorted((g for g in MOVIELENS_GENRES if _genre_key(g) not in liked),
                      key=lambda g: (counts.get(_genre_key(g), 0), _GENRE_ORDER[_genre_key(g)]))[:3]

    years = [item.year for item in history if item.year is not None]
    mean_year = sum(years) / len(years) if years else float(REFERENCE_YEAR)
    age = 18 + min(42, round(1.5 * max(0.0, REFERENCE_YEAR - mean_year))) - round(8 * _share(history, _KIDS))

    gender = "female" if _share(history, _SOFT) > _share(history, _HARD) else "male"

    origins = [guess_origin(item.title) for item in history]
    known = Counter(o for o in origins if o is not None and o != FOREIGN_UNKNOWN)
    foreign = sum(o is not None for o in origins)
    country, language = known.most_common(1)[0][0] if foreign * 2 > len(history) and known else ("USA", "English")

    return {"age": int(age), "gender": gender, "liked_genres": [names[k] for k in liked],
            "disliked_genres": disliked, "liked_directors": [], "country": country, "language": language}


def profile_answer(prompt: ProfilePrompt) -> str:
    """The JSON answer text of a profile prompt."""
    return json.dumps(profile(prompt.history))
