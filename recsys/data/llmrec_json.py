"""The LLMRec official data format: train.json / val.json / test.json in one folder.

Each file is a JSON object mapping a user id (as a string) to a list of integer item ids. The split is given by
the files, so loading returns both the Dataset (all pairs) and the Split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.dataset import INTERACTION_COLUMNS, PAIR_COLUMNS, Dataset, Split
from recsys.data.errors import DataError
from recsys.data.tabular import drop_duplicate_pairs, empty_items, require_file

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Split part -> accepted file names, first preferred ("val.json" is what LLMRec ships).
JSON_FILES = {"train": ("train.json",), "valid": ("val.json", "valid.json"), "test": ("test.json",)}


def _part_path(folder: Path, part: str) -> Path:
    for name in JSON_FILES[part]:
        if (folder / name).is_file():
            return folder / name
    return require_file(folder / JSON_FILES[part][0], f"LLMRec {part} split")  # raises, naming the file


def json_split_files(folder: Path) -> dict[str, Path]:
    """The file each split part is read from (DataError naming a missing one)."""
    return {part: _part_path(Path(folder), part) for part in JSON_FILES}


def _parse_user(key: str, path: Path) -> int:
    text = key.strip()
    if not text.lstrip("-").isdigit():
        raise DataError(f"user key {key!r} is not an integer id", path=path, column="user_id")
    if not INT64_MIN <= int(text) <= INT64_MAX:
        raise DataError(f"user key {key!r} is outside the int64 range of ids", path=path, column="user_id")
    return int(text)


def read_json_part(path: Path) -> pd.DataFrame:
    """One LLMRec JSON file as (user_id, item_id) int64 pairs; users with empty lists contribute nothing."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", path=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"file is not UTF-8 (byte offset {exc.start})", path=path) from None
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object mapping user id -> list of item ids, got {type(data).__name__}",
                        path=path)
    users, items = [], []
    for key, value in data.items():
        user = _parse_user(key, path)
        if not isinstance(value, list):
            raise DataError(f"user {key!r}: expected a list of item ids, got {type(value).__name__}",
                            path=path, column="item_id")
        # bool is an int subclass in Python; true/false are never item ids.
        bad = [v for v in value if not isinstance(v, int) or isinstance(v, bool)]
        if bad:
            raise DataError(f"user {key!r}: item ids must be integers, got {bad[0]!r}", path=path,
                            column="item_id")
        huge = [v for v in value if not INT64_MIN <= v <= INT64_MAX]
        if huge:
            raise DataError(f"user {key!r}: item id {huge[0]} is outside the int64 range of ids", path=path,
                            column="item_id")
        users.extend([user] * len(value))
        items.extend(value)
    pairs = pd.DataFrame({"user_id": np.asarray(users, dtype=np.int64), "item_id": np.asarray(items, dtype=np.int64)})
    return drop_duplicate_pairs(pairs, path)


def load_llmrec_json(folder: Path) -> tuple[Dataset, Split]:
    """Load an LLMRec-format folder: the Dataset (all pairs, items without text) and the Split from the files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("LLMRec data folder does not exist", path=folder)
    paths = json_split_files(folder)
    parts = {part: read_json_part(path) for part, path in paths.items()}
    if len(parts["train"]) == 0:
        raise DataError("train split has no interactions", path=paths["train"])
    pairs = pd.concat(list(parts.values()), ignore_index=True).drop_duplicates(list(PAIR_COLUMNS))
    pairs = pairs.sort_values(list(PAIR_COLUMNS), kind="stable").reset_index(drop=True)
    interactions = pairs.assign(rating=np.nan, timestamp=pd.array([pd.NA] * len(pairs), dtype="Int64"))
    dataset = Dataset(name=folder.name, interactions=interactions[list(INTERACTION_COLUMNS)],
                      items=empty_items(pairs["item_id"].to_numpy()), users=None)
    return dataset, Split(**parts)
