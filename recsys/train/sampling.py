"""Per-epoch training triplets: shuffled positive pairs plus uniform negatives outside the user's train items.

Everything is vectorised with numpy: membership of (user, item) in the train set is a lookup of the key
user * n_items + item (in a dense boolean table when n_users * n_items is small enough, else by np.searchsorted in
the sorted train keys), and only the colliding draws are redrawn.
"""

from __future__ import annotations

import numpy as np

DENSE_LOOKUP_MAX = 1 << 27  # up to 128 MiB of booleans for the dense table; beyond it, binary search


class NegativeSampler:
    """Uniform negative items for users, never one of the user's train items.

    Built once from the train pairs; `sample` is then called every epoch with the run's numpy Generator.
    """

    def __init__(
        self, train: np.ndarray, n_users: int, n_items: int, *, dense_lookup_max: int = DENSE_LOOKUP_MAX
    ) -> None:
        train = np.asarray(train, dtype=np.int64).reshape(-1, 2)
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self._keys = np.unique(train[:, 0] * self.n_items + train[:, 1])
        # A user who has interacted with every item has no negative to draw; fail early instead of looping forever.
        distinct = np.bincount(self._keys // self.n_items, minlength=self.n_users)
        self.full_users = np.flatnonzero(distinct >= self.n_items)  # users with no negative item, ascending
        self._dense: np.ndarray | None = None
        if self.n_users * self.n_items <= dense_lookup_max:  # O(1) per lookup instead of a binary search
            self._dense = np.zeros(self.n_users * self.n_items, dtype=bool)
            self._dense[self._keys] = True

    def is_train(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean array: whether each (user, item) pair is a train interaction."""
        keys = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        if self._dense is not None:
            return self._dense[keys]
        if self._keys.size == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.searchsorted(self._keys, keys)
        return self._keys[np.minimum(pos, self._keys.size - 1)] == keys

    def sample(self, users: np.ndarray, n_negatives: int, rng: np.random.Generator) -> np.ndarray:
        """Negatives of shape [len(users), n_negatives] (int64), drawn uniformly from items the user lacks in train."""
        users = np.asarray(users, dtype=np.int64)
        if self.full_users.size and np.isin(users, self.full_users).any():
            raise ValueError("a user has interacted with every item in train; no negative item can be sampled")
        rows = np.repeat(users, n_negatives)
        neg = rng.integers(0, self.n_items, size=rows.size, dtype=np.int64)
        bad = np.flatnonzero(self.is_train(rows, neg))
        # Redraw only the collisions; each round shrinks them geometrically (by the user's train density).
        while bad.size:
            neg[bad] = rng.integers(0, self.n_items, size=bad.size, dtype=np.int64)
            bad = bad[self.is_train(rows[bad], neg[bad])]
        return neg.reshape(users.size, n_negatives)


def epoch_triplets(
    train: np.ndarray, sampler: NegativeSampler, n_negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch of (users [N], positives [N], negatives [N, n_negatives]) with the train pairs in a fresh order."""
    order = rng.permutation(len(train))
    users = train[order, 0]
    pos = train[order, 1]
    return users, pos, sampler.sample(users, n_negatives, rng)
