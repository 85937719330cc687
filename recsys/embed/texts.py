"""The texts that get embedded: item text (the textual modality), user profiles and item attributes.

Every builder is pure and deterministic (same row -> same string), so the text-hash cache hits whenever the
content is the same, and returns (ids, texts) in id order.

Profiles are embedded from their PARSED, validated fields, not from `raw_text`:
- `raw_text` is the model's whole answer: JSON punctuation, key names, code fences, key order and spacing vary from
  answer to answer and would dominate a sentence encoder's vector of such a short text; equal profiles written
  differently would get different vectors (and different cache entries);
- the parser keeps only typed, bounded fields; the raw answer may carry keys it dropped or any other text the model
  added, which must not reach the features unvalidated;
- a fixed sentence form reads like the natural language sentence encoders were trained on.
Attributes are embedded one field per feature source (`item_attr_director`, ...), as the bare value: the source
name already says which field it is, and a constant "Director:" prefix would only pull every vector towards one
direction. Item text is "<title> (<year>). Genres: a, b." plus the description when there is one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

TEXTS_VERSION = "1"  # bump when a builder changes its output: stored embeddings are then rebuilt
ATTRIBUTE_FIELDS = ("director", "country", "language")
SOURCES = ("item_text", "user_profile", *(f"item_attr_{f}" for f in ATTRIBUTE_FIELDS))
MAX_DESCRIPTION_CHARS = 2000  # sentence encoders truncate far earlier (MiniLM: 256 word pieces)
_WS = re.compile(r"\s+")
_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})\)\s*$")


def clean(value: Any) -> str:
    """One line: None/NaN -> "", whitespace runs -> one space, control characters dropped, stripped."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return ""
    s = _WS.sub(" ", str(value))
    return "".join(ch for ch in s if not unicodedata.category(ch).startswith("C")).strip()


def _as_list(value: Any) -> list[str]:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        return [clean(value)] if clean(value) else []
    return [c for c in (clean(v) for v in value) if c]


def _join(values: Iterable[str]) -> str:
    return ", ".join(values)


def item_text(title: Any, year: Any = None, genres: Any = None, description: Any = None) -> str:
    """"Toy Story (1995). Genres: Animation, Children's, Comedy." A year already at the end of the title (as in
    MovieLens) is not repeated; missing parts are left out."""
    t = clean(title)
    y = None if year is None or pd.isna(year) else int(year)
    m = _YEAR_SUFFIX.search(t)
    if m and (y is None or int(m.group(1)) == y):
        y = int(m.group(1))
        t = t[:m.start()].strip()
    head = f"{t} ({y})" if t and y is not None else (t or (str(y) if y is not None else ""))
    parts = [head + "." if head else ""]
    g = _join(p for p in (clean(x) for x in re.split(r"[|,]", clean(genres))) if p)
    if g:
        parts.append(f"Genres: {g}.")
    d = clean(description)[:MAX_DESCRIPTION_CHARS]
    if d:
        parts.append(d)
    return " ".join(p for p in parts if p)


def profile_text(row: Any) -> str:
    """A user profile (the parsed fields of user_profiles) as a sentence, e.g. "A 25-year-old male from United
    States who speaks English. Likes Drama, Comedy. Dislikes Horror. Favourite directors: Steven Spielberg." """
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    age, gender = get("age"), clean(get("gender"))
    who = "A"
    if age is not None and not pd.isna(age):
        who += f" {int(age)}-year-old"
    who += f" {gender or 'person'}"
    country, language = clean(get("country")), clean(get("language"))
    if country:
        who += f" from {country}"
    if language:
        who += f" who speaks {language}"
    parts = [who + "."]
    for label, field in (("Likes", "liked_genres"), ("Dislikes", "disliked_genres"),
                         ("Favourite directors:", "liked_directors")):
        values = _as_list(get(field))
        if values:
            parts.append(f"{label} {_join(values)}.")
    return " ".join(parts)


def item_texts_of(items: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """(item ids, texts) from an items table (item_id, title[, year, genres, description])."""
    df = items.sort_values("item_id")
    col = (lambda c: df[c] if c in df else pd.Series([None] * len(df), index=df.index))  # noqa: E731
    texts = [item_text(t, y, g, d) for t, y, g, d in zip(col("title"), col("year"), col("genres"),
                                                           col("description"), strict=True)]
    return df["item_id"].to_numpy(dtype=np.int64), texts


def profile_texts_of(profiles: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """(user ids, texts) from user_profiles; a user listed twice keeps the last row."""
    df = profiles.drop_duplicates("user_id", keep="last").sort_values("user_id")
    texts = [profile_text(r) for r in df.to_dict("records")]
    return df["user_id"].to_numpy(dtype=np.int64), texts


def attribute_texts_of(attributes: pd.DataFrame, field: str) -> tuple[np.ndarray, list[str]]:
    """(item ids, values) of one attribute field from item_attributes; empty values are left out (those items get
    no row: see `recsys.embed.features.align`)."""
    if field not in ATTRIBUTE_FIELDS:
        raise ValueError(f"unknown attribute field {field!r}; expected one of {ATTRIBUTE_FIELDS}")
    df = attributes.drop_duplicates("item_id", keep="last").sort_values("item_id")
    values = [clean(v) for v in df[field]]
    keep = [i for i, v in enumerate(values) if v]
    return df["item_id"].to_numpy(dtype=np.int64)[keep], [values[i] for i in keep]


def texts_for(source: str, table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """(ids, texts) of a feature source: "item_text" (items table), "user_profile" (user_profiles),
    "item_attr_<field>" (item_attributes)."""
    if source == "item_text":
        return item_texts_of(table)
    if source == "user_profile":
        return profile_texts_of(table)
    if source.startswith("item_attr_"):
        return attribute_texts_of(table, source.removeprefix("item_attr_"))
    raise ValueError(f"unknown text source {source!r}; expected one of {SOURCES}")
