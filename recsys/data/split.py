"""Per-user train / valid / test splits, and reading a split stored as files.

Every method orders each user's interactions, then cuts that order: the first part is train, then valid, then
test (the last ones). Only the ordering differs between methods:
- random: the reference protocol (../shared/bench/README.md); reproduces ../shared/bench/ml100k-split exactly.
- temporal: by timestamp, ties by item id.
- loo: leave-one-out on the same ordering (timestamp if present, else the random one).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.config import SplitConfig
from recsys.data.dataset import PAIR_COLUMNS, Split
from recsys.data.degenerate import warn_skipped
from recsys.data.errors import DataError
from recsys.data.llmrec_json import json_split_files, load_llmrec_json
from recsys.data.tabular import (
    check_columns,
    drop_duplicate_pairs,
    find_in_folder,
    read_frame,
    to_int_ids,
)

log = logging.getLogger("llmrec.data")

SPLIT_PARTS = ("train", "valid", "test")


# ---------------------------------------------------------------------------------------------------- helpers


def _sorted_pairs(interactions: pd.DataFrame, with_timestamp: bool = False) -> pd.DataFrame:
    """Unique (user, item) pairs sorted by user then item, the canonical order every method starts from."""
    cols = [*PAIR_COLUMNS, "timestamp"] if with_timestamp else list(PAIR_COLUMNS)
    pairs = interactions[cols].drop_duplicates(list(PAIR_COLUMNS), keep="first")
    return pairs.sort_values(list(PAIR_COLUMNS), kind="stable").reset_index(drop=True)


def _user_blocks(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offset and length of each user's contiguous block in a user-sorted array."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if users.size else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, users.size])
    return starts, counts


def _reference_order(users: np.ndarray, seed: int) -> np.ndarray:
    """Positions that permute each user's block with ONE shared default_rng(seed), users ascending.

    This is the reference protocol. The loop over users is deliberate: reproducing the generator's sequential
    stream (one permutation per user, in order) cannot be vectorised; it costs a few ms per thousand users.
    """
    rng = np.random.default_rng(seed)
    order = np.empty(users.size, dtype=np.int64)
    starts, counts = _user_blocks(users)
    for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
        order[start:start + count] = start + rng.permutation(count)
    return order


def _cut(pairs: pd.DataFrame, order: np.ndarray, n_valid: np.ndarray, n_test: np.ndarray) -> Split:
    """Cut each user's ordered block: the last n_test rows -> test, the n_valid before -> valid, rest -> train.

    `pairs` is sorted by user; `order` lists row positions user-block by user-block; n_valid / n_test are per
    user (in user order).
    """
    users = pairs["user_id"].to_numpy()
    starts, counts = _user_blocks(users)
    rank = np.arange(users.size) - np.repeat(starts, counts)  # position within the user's ordered block
    from_end = np.repeat(counts, counts) - rank  # 1 for the user's last row
    test_n, valid_n = np.repeat(n_test, counts), np.repeat(n_valid, counts)
    part = np.where(from_end <= test_n, 2, np.where(from_end <= test_n + valid_n, 1, 0))
    labels = np.empty(users.size, dtype=np.int8)
    labels[order] = part
    out = {}
    for code, name in enumerate(SPLIT_PARTS):
        frame = pairs.loc[labels == code, list(PAIR_COLUMNS)]
        out[name] = frame.astype(np.int64).reset_index(drop=True)
    return Split(**out)


def _require_timestamps(interactions: pd.DataFrame, method: str) -> None:
    if "timestamp" not in interactions:
        raise DataError(f"the {method} split needs timestamps; the interactions have none", column="timestamp")
    missing = interactions["timestamp"].isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0]) + 1
        raise DataError(f"the {method} split needs a timestamp on every interaction; {int(missing.sum())} lack one",
                        column="timestamp", row=row)


def _per_user_counts(pairs: pd.DataFrame, ratio: float) -> np.ndarray:
    _, counts = _user_blocks(pairs["user_id"].to_numpy())
    # floor(ratio * n) as in the reference protocol; the epsilon makes floor(0.29 * 100) 29, not 28 (from
    # 28.999999999999996), and changes nothing for ratio 0.1
    return np.floor(ratio * counts + 1e-9).astype(np.int64)


def _time_order(pairs: pd.DataFrame) -> np.ndarray:
    """Row positions ordered by (user, timestamp, item)."""
    ts = pairs["timestamp"].to_numpy(dtype=np.int64)
    return np.lexsort((pairs["item_id"].to_numpy(), ts, pairs["user_id"].to_numpy()))


# ---------------------------------------------------------------------------------------------------- methods


def random_split(interactions: pd.DataFrame, *, valid_ratio: float = 0.1, test_ratio: float = 0.1,
                 seed: int = 2020) -> Split:
    """Per-user random split (the reference protocol).

    Each user's interactions, sorted by item id, are permuted with one shared default_rng(seed) (users in
    ascending id order); the permutation's first n - n_valid - n_test go to train, the next floor(valid_ratio n)
    to valid and the last floor(test_ratio n) to test. Parts come back sorted by (user_id, item_id).
    """
    pairs = _sorted_pairs(interactions)
    order = _reference_order(pairs["user_id"].to_numpy(), seed)
    return _cut(pairs, order, _per_user_counts(pairs, valid_ratio), _per_user_counts(pairs, test_ratio))


def temporal_split(interactions: pd.DataFrame, *, valid_ratio: float = 0.1, test_ratio: float = 0.1) -> Split:
    """Per-user split by time: the last floor(test_ratio n) -> test, the floor(valid_ratio n) before -> valid.

    Ties in timestamp are broken by item id, so the split is deterministic. Needs a timestamp on every row.
    """
    _require_timestamps(interactions, "temporal")
    pairs = _sorted_pairs(interactions, with_timestamp=True)
    return _cut(pairs, _time_order(pairs), _per_user_counts(pairs, valid_ratio),
                _per_user_counts(pairs, test_ratio))


def leave_one_out(interactions: pd.DataFrame, *, seed: int = 2020) -> Split:
    """Per user: the last interaction -> test, the second-last -> valid; users with < 3 keep all in train.

    "Last" is by timestamp (ties by item id) when every row has one, else by the random split's per-user
    permutation with `seed`. Rows with only some timestamps are an error rather than a silent fallback.
    """
    has_ts = "timestamp" in interactions and interactions["timestamp"].notna().any()
    if has_ts:
        _require_timestamps(interactions, "leave-one-out")
    pairs = _sorted_pairs(interactions, with_timestamp=has_ts)
    users = pairs["user_id"].to_numpy()
    order = _time_order(pairs) if has_ts else _reference_order(users, seed)
    _, counts = _user_blocks(users)
    held = (counts >= 3).astype(np.int64)
    return _cut(pairs, order, held, held)


def split_interactions(interactions: pd.DataFrame, cfg: SplitConfig) -> Split:
    """Split interactions with the method in `cfg` (random, temporal or loo)."""
    if len(interactions) == 0:
        raise DataError("cannot split an empty set of interactions")
    if cfg.method == "random":
        return random_split(interactions, valid_ratio=cfg.valid_ratio, test_ratio=cfg.test_ratio, seed=cfg.seed)
    if cfg.method == "temporal":
        return temporal_split(interactions, valid_ratio=cfg.valid_ratio, test_ratio=cfg.test_ratio)
    if cfg.method == "loo":
        return leave_one_out(interactions, seed=cfg.seed)
    raise ValueError(f"split method {cfg.method!r} reads files; use load_split_dir (or loading.make_split)")


def cap_train(split: Split, max_per_user: int, *, seed: int = 2020, timestamps: pd.DataFrame | None = None) -> Split:
    """The sparse-data protocol: keep at most `max_per_user` training pairs per user; valid and test untouched.

    Kept: the user's earliest pairs by timestamp (ties by item id) when `timestamps` (user_id, item_id,
    timestamp) gives one for every training pair, else a random choice from one default_rng(seed) permutation per
    user (users ascending, pairs by item id first, as the reference split). Users keep min(n, max_per_user)
    pairs, so no user loses its training data. Train comes back sorted by (user_id, item_id).
    """
    if max_per_user < 1:
        raise ValueError(f"max_per_user must be >= 1, got {max_per_user}")
    pairs = _sorted_pairs(split.train)
    order = None
    if timestamps is not None and "timestamp" in timestamps:
        stamps = (timestamps.dropna(subset=["timestamp"]).groupby(list(PAIR_COLUMNS))["timestamp"].min()
                  .rename("timestamp").reset_index())
        timed = pairs.merge(stamps, on=list(PAIR_COLUMNS), how="left")
        if timed["timestamp"].notna().all():
            order = _time_order(timed)
    if order is None:
        order = _reference_order(pairs["user_id"].to_numpy(), seed)
    starts, counts = _user_blocks(pairs["user_id"].to_numpy())
    rank = np.empty(len(pairs), dtype=np.int64)
    rank[order] = np.arange(len(pairs)) - np.repeat(starts, counts)  # position of each row in its user's order
    train = pairs.loc[rank < max_per_user, list(PAIR_COLUMNS)].astype(np.int64).reset_index(drop=True)
    return Split(train=train, valid=split.valid, test=split.test)


# ------------------------------------------------------------------------------------------------ split files


def split_files(folder: Path) -> dict[str, Path]:
    """train / valid / test files in `folder` (Parquet preferred over CSV); DataError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("split folder does not exist", path=folder)
    files = {}
    for part in SPLIT_PARTS:
        found = find_in_folder(folder, part)
        if found is None:
            has = ", ".join(sorted(p.name for p in folder.iterdir())) or "(empty)"
            raise DataError(f"split folder lacks {part}.parquet or {part}.csv; it has: {has}",
                            path=folder / f"{part}.csv")
        files[part] = found
    return files


def read_split_part(path: Path, part: str) -> pd.DataFrame:
    """One split file as (user_id, item_id) int64, validated like user interactions and deduplicated."""
    df = read_frame(path, f"{part} split")
    check_columns(df, PAIR_COLUMNS, path, f"{part} split")
    out = pd.DataFrame({
        "user_id": to_int_ids(df["user_id"], path, "user_id"),
        "item_id": to_int_ids(df["item_id"], path, "item_id"),
    })
    return drop_duplicate_pairs(out, path)


def resolve_overlap(split: Split, files: dict[str, Path], policy: str = "error") -> Split:
    """The split with no (user, item) pair in two parts, or a DataError naming both files and the number of shared
    pairs (`policy` "error"). A pair in train and valid masks the valid item as a "known" one and a pair in valid
    and test masks the test item the same way, so a shared pair is never a harmless duplicate: with `policy`
    "drop" it is removed from the later part (valid after train; test after train and valid) with one warning
    per pair of parts saying how many."""
    parts = dict(split.parts())
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        key_b = pd.MultiIndex.from_frame(parts[b][list(PAIR_COLUMNS)])
        shared = key_b.isin(pd.MultiIndex.from_frame(parts[a][list(PAIR_COLUMNS)]))
        if not shared.any():
            continue
        user, item = (int(v) for v in key_b[int(np.flatnonzero(shared)[0])])
        if policy != "drop":
            raise DataError(f"{files[a]} and {files[b]} share {int(shared.sum())} (user_id, item_id) pair(s), e.g. "
                            f"user {user} item {item}; a pair may be in one part only. Remove them, or drop them "
                            f"from {files[b].name} with split option overlap='drop' (--split-overlap drop)",
                            path=files[b])
        log.warning("%s and %s share %d (user_id, item_id) pair(s), e.g. user %d item %d; dropped them from %s",
                    files[a], files[b], int(shared.sum()), user, item, files[b].name)
        parts[b] = parts[b].loc[~shared].reset_index(drop=True)
    return Split(**parts)


def load_split_dir(folder: Path, overlap: str = "error") -> Split:
    """Read a stored split: train / valid / test as Parquet (preferred) or CSV with columns user_id, item_id.

    A folder in the LLMRec JSON format (train.json, val.json, test.json) is read too. train must have rows;
    an empty valid or test file is allowed with a warning. Pairs in two parts are an error, or dropped from the
    later part with `overlap` "drop" (`resolve_overlap`).
    """
    folder = Path(folder)
    if (folder / "train.json").is_file():
        return resolve_overlap(load_llmrec_json(folder)[1], json_split_files(folder), overlap)
    files = split_files(folder)
    parts = {part: read_split_part(path, part) for part, path in files.items()}
    if len(parts["train"]) == 0:
        raise DataError("train split has no rows", path=files["train"])
    for part in ("valid", "test"):
        if len(parts[part]) == 0:
            log.warning("%s: the %s split has no rows; metrics on it will be empty", files[part], part)
    return resolve_overlap(Split(**parts), files, overlap)


# ------------------------------------------------------------------------------------------- users held out


def min_interactions(cfg: SplitConfig) -> int | None:
    """The fewest interactions a user needs for `cfg`'s method to hold one out in valid and in test (None: no
    number does, a ratio being 0). random / temporal keep floor(ratio n) per part; leave-one-out needs 3."""
    if cfg.method == "loo":
        return 3
    ratios = (cfg.valid_ratio, cfg.test_ratio)
    if min(ratios) <= 0:
        return None
    return max(math.ceil((1.0 - 1e-9) / r) for r in ratios)  # the epsilon matches _per_user_counts


def check_held_out(split: Split, interactions: pd.DataFrame, cfg: SplitConfig, source: str | None) -> None:
    """After a random / temporal / loo split: users too sparse to hold an item out stay in train only, with one
    warning; when valid or test is left empty, a DataError naming the file, how many users are too sparse and the
    split that fits."""
    counts = interactions.drop_duplicates(list(PAIR_COLUMNS)).groupby("user_id").size()
    need = min_interactions(cfg)
    held = np.intersect1d(split.valid["user_id"].to_numpy(), split.test["user_id"].to_numpy())
    sparse = counts[~counts.index.isin(held)]
    empty = [part for part in ("valid", "test") if len(getattr(split, part)) == 0]
    what = (f"fewer than {need} interactions, too few for the {cfg.method} split to hold one out"
            if need is not None else f"nothing held out: the {cfg.method} split has valid_ratio {cfg.valid_ratio} "
                                     f"and test_ratio {cfg.test_ratio}")
    if not empty:
        warn_skipped("split", sparse.index.to_numpy(), f"from valid or test ({what}; they are not evaluated)",
                     source)
        return
    loo_fits = int((counts >= 3).sum())
    if cfg.method != "loo" and loo_fits:
        fits = (f"the split that fits: --split loo (leave-one-out: the last item to test, the one before to valid; "
                f"{loo_fits} of {len(counts)} users have the 3 interactions it needs)")
    else:
        fits = "no split fits: leave-one-out needs 3 interactions per user and no user has them"
    raise DataError(f"{len(sparse)} of {len(counts)} users have {what} ({counts.min()} to {counts.max()} "
                    f"interactions each), so {' and '.join(empty)} would be empty; {fits}", path=source)


def check_given_split(split: Split, paths: dict[str, Path]) -> None:
    """A given split (files): users of valid or test without a training interaction (cold users) are named in one
    warning per part (evaluation leaves them out, EvalConfig.cold_users); a part with no user that has one is a
    DataError (nothing to validate or to test)."""
    train_users = split.train["user_id"].unique()
    for part in ("valid", "test"):
        users = getattr(split, part)["user_id"].unique()
        cold = np.setdiff1d(users, train_users)
        if cold.size:
            log.warning("split: %d of %d user(s) in %s have no training interaction (cold users: their embedding is "
                        "never trained, so evaluation leaves them out unless cold_users='keep'), e.g. user %d "
                        "[file %s]", cold.size, users.size, part, int(cold[0]), paths[part])
        if cold.size == users.size:
            detail = ("has no pairs" if users.size == 0 else
                      f"has only cold users ({cold.size}): no user of it has a training interaction")
            use = "early stopping monitors valid" if part == "valid" else "the final evaluation reads test"
            raise DataError(f"the {part} split {detail}, and {use}", path=paths[part])
