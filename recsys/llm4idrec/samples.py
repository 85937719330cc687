"""LLM4IDRec fine-tuning samples from training histories (paper: "randomly generating" and "fully generating").

Random prefixes, as the official code implements them (newlei/LLM4IDRec `data_process.py`): for each user with at
least 3 training items, 20 draws; each draw shuffles the user's items, takes a prefix length L uniform in
[1, n - 2] as the input list and the remaining n - L items as the target. (The official file names an undefined
`target_preference_str` as the target; the remainder list is what it means.)

Full list: the paper's global variant, whose exact form its code does not contain: one sample per user whose input
list is empty and whose target is the user's whole training list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_ITEMS = 3  # official code: users with fewer training items are skipped
PREFIXES_PER_USER = 20  # official code: 20 random prefixes per user


@dataclass(frozen=True)
class Sample:
    """One fine-tuning example: the prompt's item list (`history`) and the answer's (`target`), raw ids."""

    user_id: int
    history: tuple[int, ...]
    target: tuple[int, ...]


def training_histories(train: pd.DataFrame) -> dict[int, tuple[int, ...]]:
    """user_id -> its training items in the table's row order (the only data samples may use)."""
    if not {"user_id", "item_id"} <= set(train.columns):
        raise ValueError(f"training table needs columns user_id and item_id, has {list(train.columns)}")
    grouped = train.groupby("user_id", sort=True)["item_id"].agg(lambda s: tuple(int(i) for i in s))
    return {int(u): items for u, items in grouped.items()}


def prefix_samples(histories: Mapping[int, Sequence[int]], *, per_user: int = PREFIXES_PER_USER,
                   min_items: int = MIN_ITEMS, seed: int = 2023) -> list[Sample]:
    """The random-prefix samples (module docstring), `per_user` per user with >= `min_items` items, in user order.

    Each user's draws come from a generator seeded by (seed, user_id), so adding or removing other users changes
    none of them. Raises ValueError if `min_items` < 3 (L in [1, n - 2] needs n >= 3)."""
    if min_items < 3:
        raise ValueError(f"min_items must be >= 3 (prefix length in [1, n-2]), got {min_items}")
    samples: list[Sample] = []
    for user in sorted(histories):
        items = np.asarray(histories[user], dtype=np.int64)
        n = items.size
        if n < min_items:
            continue
        rng = np.random.default_rng([seed, int(user)])
        for _ in range(per_user):
            length = int(rng.integers(1, n - 1))  # uniform in [1, n-2]
            order = rng.permutation(items)
            samples.append(Sample(int(user), tuple(int(i) for i in order[:length]),
                                  tuple(int(i) for i in order[length:])))
    return samples


def full_list_samples(histories: Mapping[int, Sequence[int]], *, min_items: int = MIN_ITEMS) -> list[Sample]:
    """The full-list variant (module docstring): per user with >= `min_items` items, an empty input list and the
    whole training list as the target."""
    return [Sample(int(u), (), tuple(int(i) for i in histories[u]))
            for u in sorted(histories) if len(histories[u]) >= min_items]
