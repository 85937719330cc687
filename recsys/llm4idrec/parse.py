"""Parsing generated item lists (official code: newlei/LLM4IDRec `generate_data_process.py`).

The official script splits the generation on `i`, keeps what parses as an int below item_num and unions it with the
user's items as sets. Here a generation is split on commas, semicolons and whitespace; a piece is kept only when it
is exactly `i<id>`, the id is in the catalogue, not in the user's history and not already kept. Every dropped piece
is counted under one reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

ITEM_TOKEN = re.compile(r"(?<![A-Za-z0-9])i(\d+)(?![A-Za-z0-9])")
_USER = re.compile(r"user\(u(\d+)\)")
_PIECE = re.compile(r"^i(\d+)$")
_SEPARATORS = re.compile(r"[,;\s]+")

DROP_REASONS = ("unparsable", "not_in_catalogue", "in_history", "repeated")


@dataclass
class Parsed:
    """Items kept from one generation (first-seen order) and the count of dropped pieces per reason."""

    items: list[int] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)

    @property
    def pieces(self) -> int:
        return len(self.items) + sum(self.dropped.values())


def parse_user(prompt: str) -> int:
    """The user id of a prompt (`user(u<id>)`); ValueError naming the prompt's start if it has none."""
    m = _USER.search(prompt)
    if not m:
        raise ValueError(f"no user(u<id>) in prompt {prompt[:60]!r}")
    return int(m.group(1))


def parse_generation(text: str, history: Collection[int], catalogue: Collection[int]) -> Parsed:
    """Keep the `i<id>` pieces of `text` (see module docstring). `history`: the user's training items; `catalogue`:
    every known item id. Reasons in `dropped`: unparsable, not_in_catalogue, in_history, repeated."""
    out = Parsed()
    seen: set[int] = set()
    for piece in _SEPARATORS.split(text.strip()):
        if not piece:
            continue
        m = _PIECE.match(piece.strip(".\"'[](){}"))
        if not m:
            out.dropped["unparsable"] += 1
            continue
        item = int(m.group(1))
        reason = ("not_in_catalogue" if item not in catalogue else "in_history" if item in history
                  else "repeated" if item in seen else None)
        if reason:
            out.dropped[reason] += 1
        else:
            seen.add(item)
            out.items.append(item)
    return out
