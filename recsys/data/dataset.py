"""In-memory containers passed between data loading, splitting and training.

Raw ids (as in the source files) live in DataFrames; dense ids (0..n-1) live in numpy arrays for torch. The IdMap
is the one bridge between them and is stored as an artifact so every output can speak raw ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.data.errors import DataError

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "year", "genres", "description")
PAIR_COLUMNS = ("user_id", "item_id")


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset with raw ids.

    interactions: user_id int64, item_id int64, rating float64 (NaN when absent), timestamp Int64 (nullable).
    items: item_id int64, title str, year Int64 (nullable), genres str ('|'-joined, may be ''), description str.
    users: user_id int64 plus any side columns, or None.
    source: the file or folder the interactions were read from (for messages), or None.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    source: str | None = None


@dataclass(frozen=True)
class Split:
    """Train / valid / test (user_id, item_id) pairs with raw ids."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "valid": self.valid, "test": self.test}


@dataclass(frozen=True)
class IdMap:
    """Raw <-> dense id maps. Dense id = position in the sorted raw-id array."""

    user_ids: np.ndarray  # sorted unique raw user ids (int64)
    item_ids: np.ndarray  # sorted unique raw item ids (int64)

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    @classmethod
    def build(cls, user_ids: np.ndarray, item_ids: np.ndarray) -> IdMap:
        """Build from any raw ids (duplicates allowed); the item universe should include items never in train."""
        return cls(np.unique(np.asarray(user_ids, dtype=np.int64)), np.unique(np.asarray(item_ids, dtype=np.int64)))

    @staticmethod
    def _to_dense(known: np.ndarray, raw: np.ndarray, what: str) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.int64)
        pos = np.searchsorted(known, raw)
        pos_clipped = np.minimum(pos, max(known.size - 1, 0))
        bad = (pos >= known.size) | (known[pos_clipped] != raw) if known.size else np.ones(raw.shape, bool)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(f"unknown {what} id {int(raw[first])} (row {first}); it is not in the id map",
                            column=f"{what}_id", row=first)
        return pos.astype(np.int64)

    def users_to_dense(self, raw: np.ndarray) -> np.ndarray:
        return self._to_dense(self.user_ids, raw, "user")

    def items_to_dense(self, raw: np.ndarray) -> np.ndarray:
        return self._to_dense(self.item_ids, raw, "item")

    def to_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(user_id, uid) and (item_id, iid) tables for storage."""
        users = pd.DataFrame({"user_id": self.user_ids, "uid": np.arange(self.n_users, dtype=np.int64)})
        items = pd.DataFrame({"item_id": self.item_ids, "iid": np.arange(self.n_items, dtype=np.int64)})
        return users, items

    @classmethod
    def from_frames(cls, users: pd.DataFrame, items: pd.DataFrame) -> IdMap:
        u = users.sort_values("uid")
        i = items.sort_values("iid")
        return cls(u["user_id"].to_numpy(np.int64), i["item_id"].to_numpy(np.int64))


@dataclass(frozen=True)
class DenseSplit:
    """Dense-id (user, item) pairs for training and evaluation; arrays of shape [n, 2], int64.

    `user_ids` (raw id of each dense user, as IdMap.user_ids) and `source` (the file the pairs were read from) are
    only for messages that must name a user and a file; None when unknown.
    """

    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    user_ids: np.ndarray | None = None
    source: str | None = None

    @classmethod
    def from_split(cls, split: Split, ids: IdMap, source: str | None = None) -> DenseSplit:
        def dense(df: pd.DataFrame) -> np.ndarray:
            u = ids.users_to_dense(df["user_id"].to_numpy())
            i = ids.items_to_dense(df["item_id"].to_numpy())
            return np.stack([u, i], axis=1) if len(df) else np.zeros((0, 2), np.int64)

        return cls(ids.n_users, ids.n_items, dense(split.train), dense(split.valid), dense(split.test),
                   user_ids=ids.user_ids, source=source)

    def raw_users(self, dense: np.ndarray) -> np.ndarray:
        """The raw ids of dense user ids (the dense ids themselves when the raw ones are unknown)."""
        dense = np.asarray(dense, dtype=np.int64)
        return self.user_ids[dense] if self.user_ids is not None else dense
